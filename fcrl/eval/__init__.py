"""Evaluation on the Berkeley Function Calling Leaderboard (BFCL), offline."""
