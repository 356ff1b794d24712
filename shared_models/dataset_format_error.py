"""The one error a malformed dataset raises, wherever it is found.

Loaders (``client.data.loaders``) find most of these while indexing a folder, but
an audio clip can turn out to be broken only when ``shared_models.audio_features``
decodes it, so the error lives in the bottom layer both can import.
"""

from __future__ import annotations

from pathlib import Path


class DatasetFormatError(ValueError):
    """A dataset folder or file does not follow its published format.

    The message always names the file (and the line or field where it helps)
    and says what is wrong, so a hospital can fix its data without reading code.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")
