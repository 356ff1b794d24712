"""The auditor's report: build it from a run folder, sign it, render it, compare two runs.

- ``build``: report.json from the run folder (metrics, fairness, privacy, the threat model);
- ``baseline``: the majority-class and chance rates beside the accuracy, each hospital's test results;
- ``fairness``: per-group metrics with intervals (Fairlearn's MetricFrame);
- ``threat_model``: what each privacy figure means;
- ``signing``: the coordinator's Ed25519 key, signature and verification;
- ``html``/``html_parts``/``plots``: the self-contained page (one unit per kind of figure);
  ``compare``: two runs side by side.
"""
