collect_ignore = ["test_bot_trial.py"]  # trial runs it (make test), not pytest
