"""Monitoring: drift statistics, delayed-label decay, the check job, Evidently reports, retraining."""
