"""The auditor's report: build it from a run folder, sign it, render it, compare two runs.

``build`` assembles report.json from ``SECTIONS`` (``run_folder`` reads the files; ``rounds_section``,
``baseline``, ``privacy_section`` + ``ledger_check``, ``fairness_section``, ``calibration`` build the parts);
``signing`` signs it; ``html`` renders ``PAGE_SECTIONS`` (``summary_text``, ``fairness_html``, ``privacy_html``,
``html_parts``, ``plots``); ``compare`` puts two runs side by side.

To add a section: (1) write ``server/report/<name>_section.py`` with ``def <name>_part(run, report) -> dict``
returning its top-level keys, and append it to ``build.SECTIONS``; (2) write ``<name>_html.py`` with a
renderer ``(report) -> str`` and append ``("Heading", renderer)`` to ``html.PAGE_SECTIONS``; (3) describe its
fields in docs/report.md (bump ``build.SCHEMA_VERSION`` only when a field changes meaning or disappears).
"""
