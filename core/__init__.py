"""FreezeLab core: training engine, run store, jobs and prediction. No UI code here."""
