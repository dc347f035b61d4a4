"""The report stage: leaderboard with bootstrap CIs, plots, HTML and Markdown; and scoring of prediction files."""
