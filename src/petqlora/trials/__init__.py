"""Trials: several training configs of one run, trained in parallel (a `dsl.ParallelFor` branch each), scored
on the validation split, the best kept for the test split. plan (the trial list from the `trials` parameter,
its checks, the sweep's fingerprint), select (the winner, ties to the cheaper trial), report (the trials
table), steps (the library side of the plan_trials, score_trial and select_trial components)."""
