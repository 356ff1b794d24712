"""Input preprocessing shared by training (client/data) and prediction (client/inference): one code path."""
