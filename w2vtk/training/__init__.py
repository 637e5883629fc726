"""The trainer shared by pretraining and fine-tuning: configs, schedules, distributed helpers, the loop."""
