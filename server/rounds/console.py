"""The coordinator's console and its ``run.log``: our lines, one progress line per round, one final summary.

What the researcher sees by default:

* FedEmo's own lines (the run's settings, one ``[fedemo] round n/N`` line per
  round with its elapsed time and an ETA, warnings, errors). On a terminal
  each round line starts with a progress bar drawn by ``rich``; anywhere
  else (a file, a pipe, CI, ``flwr run``'s log stream) the same line is plain
  text, with no control codes. A round line fits 100 columns with its bar
  (accuracy, macro-F1, loss, the largest epsilon, who trained, the clock;
  ``acc 0.712~`` marks noised evaluation counts); the round's full figures
  go to run.log as a ``details of round`` line, and to the console too with
  ``--verbose``.
* Flower's own INFO lines (its sampling notes, a strategy's banner and
  "Final results" dump, the SecAgg+ workflow's history) are hidden unless
  verbose: ``fedemo simulate --verbose``, or ``FEDEMO_VERBOSE=1`` in the
  environment of the process that runs the ServerApp. Flower's warnings and
  errors always show. This is logging configuration only (a handler and a
  filter on the ``flwr`` logger): Flower itself is untouched.
* One final summary: accuracy beside the majority-class rate, the largest
  epsilon spent (under DP), the report's and the figures' paths and the
  run's one wall-clock figure (seconds since the command started).

``run.log`` in the run folder gets the same lines in plain text with a
timestamp, plus the Python warnings raised in the coordinator's process.
Lines logged before the run folder exists are kept and written first.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, TextIO

from shared_models import quiet_warnings

VERBOSE_ENV = "FEDEMO_VERBOSE"  # "1": show Flower's own INFO lines too
STARTED_ENV = "FEDEMO_STARTED"  # epoch seconds when the command started (set by `fedemo simulate`)
PROGRESS = "fedemo_progress"  # LogRecord attribute of a round line: (round, rounds)
RUN_LOG = "run.log"
BAR_WIDTH = 8
DETAIL = "fedemo_detail"  # LogRecord attribute of a run.log-only line (shown on the console with --verbose)
CONSOLE_COLUMNS = 100  # a round line, with its progress bar, fits an ordinary terminal
ROUND_TEXT_WIDTH = CONSOLE_COLUMNS - BAR_WIDTH - 1

# Said once per DP run, in place of Opacus's "Secure RNG turned off" (shared_models/quiet_warnings.py).
DP_RANDOMNESS = ("DP-SGD: every node draws its sampling masks and Gaussian noise from a generator seeded from the "
                 "operating system's secure random source, never from the run's seed (Opacus's secure_mode is off; "
                 "docs/privacy.md)")

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_FLWR_DIR = ""


class VerboseFlag(argparse.Action):
    """``--verbose``: sets FEDEMO_VERBOSE for the coordinator (in this process, or a child it starts)."""

    def __init__(self, option_strings, dest, **kwargs):
        kwargs.setdefault("help", "also show Flower's own log lines (sampling notes, banners, final dumps)")
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        os.environ[VERBOSE_ENV] = "1"
        setattr(namespace, self.dest, True)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


# --- the one wall-clock figure -------------------------------------------------------------------


def mark_start(when: float | None = None) -> None:
    """The command starts a run now (``fedemo simulate``, ``run_simulation``): its wall clock counts from here.

    The CLI reaches this a fraction of a second after it starts (torch and
    Flower load later, inside the run), so the figure is the time the user
    waits; a further run in the same process (``fedemo compare``, a
    benchmark) counts from its own start.
    """
    os.environ[STARTED_ENV] = repr(float(time.time() if when is None else when))


def run_started() -> float:
    """When the user's command started: FEDEMO_STARTED, else this process's start (``flwr run``'s app process)."""
    try:
        return float(os.environ[STARTED_ENV])
    except (KeyError, ValueError):
        return process_started()


def process_started() -> float:
    """This process's start time (Linux /proc; elsewhere the time this module was imported)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


_IMPORTED = time.time()


def clock(seconds: float) -> str:
    """0:26, 12:05, 1:02:03."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class RoundClock:
    """Elapsed time and ETA after each round, from the rounds this process has seen complete."""

    def __init__(self, num_rounds: int):
        self.num_rounds = num_rounds
        self.created = time.time()
        self.base: float | None = None  # time of the reference point ...
        self.base_round = 0  # ... and the round completed there

    def tick(self, server_round: int) -> str:
        now = time.time()
        if self.base is None:
            if server_round == 0:  # the initial evaluation: rounds are timed from its end
                self.base, self.base_round = now, 0
                return f"elapsed {clock(now - run_started())}"
            self.base, self.base_round = self.created, server_round - 1  # a resumed run's first round
        done = server_round - self.base_round
        eta = (now - self.base) / done * max(0, self.num_rounds - server_round) if done > 0 else None
        return f"elapsed {clock(now - run_started())}" + (f", ETA {clock(eta)}" if eta is not None else "")


def progress(server_round: int, num_rounds: int) -> dict[str, Any]:
    """``extra=`` of a round line: the console draws a bar for it on a terminal."""
    return {PROGRESS: (server_round, num_rounds)}


def detail() -> dict[str, Any]:
    """``extra=`` of a line for run.log only (and the console with ``--verbose``): a round's full figures."""
    return {DETAIL: True}


def fit(parts: list[str], optional: list[str], width: int = ROUND_TEXT_WIDTH, sep: str = "  ") -> str:
    """``parts`` joined, then each of ``optional`` (in order of importance) that still fits in ``width``.

    The last of ``parts`` (the clock) stays last. Whatever is left out is in the round's detail line.
    """
    head, tail = parts[:-1], parts[-1:]
    for item in optional:
        if len(sep.join(head + [item] + tail)) <= width:
            head.append(item)
    return sep.join(head + tail)


def round_line(server_round: int, num_rounds: int, entry: dict[str, Any], epsilons: dict[str, float],
               clients: dict[str, int], clock_text: str) -> str:
    """The round's console line: accuracy, macro-F1, loss, the largest epsilon, who trained, the clock.

    At most ``ROUND_TEXT_WIDTH`` characters, so with the terminal's progress
    bar the line fits 100 columns; the full figures are in the detail line.
    """
    loss = entry.get("loss")
    parts = [f"[fedemo] round {server_round}/{num_rounds}",
             f"acc {entry['accuracy']:.3f}" + ("~" if entry.get("groups_dp") else ""),  # ~: noised counts
             f"F1 {entry['macro_f1']:.3f}", "loss " + ("n/a" if loss is None else f"{loss:.4g}")]
    names = {"training": "eps", "client-level": "client eps", "evaluation": "eval eps"}
    spent = [f"{names[k]} {v:.2f}" for k, v in epsilons.items() if v is not None]
    parts += spent[:1] + [clock_text]  # the first epsilon always shows (training's, where DP-SGD runs)
    optional = spent[1:]
    trained = f"{clients.get('trained', 0)} trained"
    trained += "".join(f", {clients[k]} {k}" for k in ("rejected", "failed") if clients.get(k))
    optional.append(trained)
    if entry.get("unchanged"):
        optional.append("model unchanged")
    return fit(parts, optional)


# --- the final summary ---------------------------------------------------------------------------


def majority_rate(entry: dict) -> float | None:
    """Largest true-class share of the evaluated rows (rows of the summed confusion matrix)."""
    counts = (entry.get("confusion") or {}).get("counts")
    if not counts:
        return None
    totals = [sum(row) for row in counts]
    return max(totals) / sum(totals) if sum(totals) else None


def noised_accuracy_interval(entry: dict) -> list[float] | None:
    """The 95% interval of a round's accuracy from noised evaluation counts (the report's), None for exact ones."""
    if not entry.get("groups_dp") or not (entry.get("confusion") or {}).get("counts"):
        return None
    from server.report.build import accuracy_interval  # scipy loads here, at the end of a run, not at start-up

    return accuracy_interval(entry["confusion"]["counts"], entry["groups_dp"])


def final_summary(run_name: str, summary: dict, history: list[dict], report: Path | None) -> str:
    """One line: rounds, wall clock, accuracy vs the majority-class rate, max epsilon, the report."""
    final, initial = summary.get("final", {}), summary.get("initial", {})
    parts = [f"FedEmo run {run_name}: {summary.get('rounds', 0)} of {summary.get('planned_rounds', '?')} rounds "
             f"in {summary['wall_clock_s']:.1f} s"]
    accuracy = final.get("accuracy")
    if accuracy is not None:
        text = f"accuracy {accuracy:.3f}"
        if initial.get("accuracy") is not None:
            text += f" (initial {initial['accuracy']:.3f})"
        last = history[-1] if history else {}
        interval = noised_accuracy_interval(last)
        if interval is not None:  # noised counts: the point alone says little, its interval says how little
            text += f" (noised counts: 95% interval {max(interval[0], 0):.3f} to {min(interval[1], 1):.3f})"
        majority = majority_rate(last)
        if majority is not None:
            majority = min(max(majority, 0.0), 1.0)
            text += f" vs majority-class rate {majority:.3f}"
            if interval is not None:
                if interval[0] <= majority:
                    text += " (at this count noise, not distinguishable from always answering the most common emotion)"
            elif accuracy <= majority:
                text += " (no better than always answering the most common emotion)"
        parts.append(text)
    privacy = summary.get("privacy") or {}
    if "max_epsilon" in privacy:
        parts.append(f"max epsilon {privacy['max_epsilon']:.2f}")
    if "central_dp" in privacy and privacy["central_dp"].get("epsilon") is not None:
        parts.append(f"client-level epsilon {privacy['central_dp']['epsilon']:.2f}")
    parts.append(f"report {report.with_suffix('.html')}" if report else "no report (see the error above)")
    if report and (report.parent / "figures").is_dir():  # figures/ and rounds.csv for a paper
        parts.append(f"figures {report.parent / 'figures'}")
    return "; ".join(parts)


# --- logging configuration -----------------------------------------------------------------------


def _is_flowers(record: logging.LogRecord) -> bool:
    """A record Flower's own code logged (ours go through the same ``flwr`` logger)."""
    global _FLWR_DIR
    if not _FLWR_DIR:
        import flwr

        _FLWR_DIR = os.path.dirname(os.path.abspath(flwr.__file__)) + os.sep
    return os.path.abspath(record.pathname).startswith(_FLWR_DIR)


def _quiet(record: logging.LogRecord) -> bool:
    return verbose() or record.levelno >= logging.WARNING or not _is_flowers(record)


def _plain(record: logging.LogRecord) -> str:
    text = _ANSI.sub("", record.getMessage())
    return text if record.levelno < logging.WARNING else f"{record.levelname}: {text}"


class ConsoleHandler(logging.Handler):
    """Writes where Flower's console handler writes (it follows Flower's own redirections)."""

    def __init__(self, flower_handler: logging.StreamHandler):
        super().__init__(logging.INFO)
        self.flower_handler = flower_handler
        self.addFilter(_quiet)
        self.addFilter(lambda record: verbose() or not getattr(record, DETAIL, False))
        self._rich: dict[int, Any] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream: TextIO = self.flower_handler.stream or sys.stderr
            if _is_terminal(stream):
                self._emit_rich(stream, record)
            else:
                stream.write(_plain(record) + "\n")
                stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)

    def _emit_rich(self, stream: TextIO, record: logging.LogRecord) -> None:
        from rich.console import Console
        from rich.progress_bar import ProgressBar
        from rich.text import Text

        console = self._rich.get(id(stream))
        if console is None or console.file is not stream:
            console = self._rich[id(stream)] = Console(file=stream, highlight=False)
        style = {logging.WARNING: "yellow", logging.ERROR: "bold red", logging.CRITICAL: "bold red"}.get(
            record.levelno, "dim" if _is_flowers(record) else "")
        text = Text(_plain(record), style=style)
        done = getattr(record, PROGRESS, None)
        if done is not None:  # rich's own bar, drawn inline before the line (no padding: the terminal wraps it)
            bar = ProgressBar(total=max(done[1], 1), completed=done[0], width=BAR_WIDTH)
            segments = console.render(bar, console.options.update(width=BAR_WIDTH))
            text = Text.assemble(*((seg.text, seg.style) for seg in segments if seg.text.strip("\n")), " ", text)
        console.print(text, soft_wrap=True)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


class _PlainFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI.sub("", super().format(record))


class _Buffer(logging.Handler):
    """Records logged before the run folder exists, for run.log."""

    LIMIT = 5000

    def __init__(self):
        super().__init__(logging.INFO)
        self.addFilter(_quiet)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < self.LIMIT:
            self.records.append(record)


_state: dict[str, Any] = {"console": None, "buffer": None, "file": None}


def begin() -> None:
    """Take over the ``flwr`` logger's console output for FedEmo (idempotent; once per process is enough).

    Also: the known-harmless warnings are filtered (shared_models/quiet_warnings.py),
    the ``flwr`` logger stops propagating to the root logger (Opacus installs
    a root handler on import: without this every line prints twice), and
    lines are kept for the next run's ``run.log``.
    """
    from flwr.supercore.logger import FLOWER_LOGGER, console_handler

    FLOWER_LOGGER.propagate = False
    if _state["console"] is None:
        _hook_warnings()
        quiet_warnings.install()  # after our hook: a silenced warning reaches neither the console nor run.log
        handler = ConsoleHandler(console_handler)
        FLOWER_LOGGER.removeHandler(console_handler)
        FLOWER_LOGGER.addHandler(handler)
        _state["console"] = handler
    if _state["buffer"] is None and _state["file"] is None:
        _state["buffer"] = _Buffer()
        FLOWER_LOGGER.addHandler(_state["buffer"])


def attach_run_log(run_dir: Path) -> Path:
    """Start ``run_dir/run.log`` (appended to on resume) with the lines kept since ``begin``."""
    from flwr.supercore.logger import FLOWER_LOGGER

    begin()
    end_run_log()
    path = Path(run_dir) / RUN_LOG
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(_PlainFormatter())
    handler.addFilter(_quiet)
    buffer = _state["buffer"]
    if buffer is not None:
        FLOWER_LOGGER.removeHandler(buffer)
        for record in buffer.records:
            handler.handle(record)
        _state["buffer"] = None
    FLOWER_LOGGER.addHandler(handler)
    _state["file"] = handler
    return path


def end_run_log(error: BaseException | None = None) -> None:
    """Close run.log; an exception ending the run is written there first (the console gets Flower's report)."""
    from flwr.supercore.logger import FLOWER_LOGGER

    handler = _state["file"]
    if handler is None:
        return
    if error is not None and not isinstance(error, (KeyboardInterrupt, SystemExit)):
        handler.handle(logging.LogRecord("flwr", logging.ERROR, __file__, 0, "The run stopped: %s: %s",
                                         (type(error).__name__, error), None))
    FLOWER_LOGGER.removeHandler(handler)
    handler.close()
    _state["file"] = None


def _hook_warnings() -> None:
    """Python warnings of this process also go to run.log (the console shows them as Python prints them)."""
    previous = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        previous(message, category, filename, lineno, file, line)
        handler = _state["file"]
        if handler is not None:
            text = warnings.formatwarning(message, category, filename, lineno, line).strip()
            handler.handle(logging.LogRecord("py.warnings", logging.WARNING, filename, lineno, "%s", (text,), None))

    warnings.showwarning = showwarning
