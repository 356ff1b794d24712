"""Deterministic synthetic faces, written in the published FER2013 and RAF-DB layouts.

Real face datasets cannot be downloaded on our machines, yet loaders, partitioners, training and fairness
reports need data that behaves like them: a learnable but hard 7-class task, unequal classes and groups,
subjects with several images, and groups a model serves worse. The parts live in ``faces/``: population
(who), params (what each face looks like), render (pixels), generate (a dataset), writers (layouts).
How faces are drawn and how the defaults were calibrated: docs/synthetic_data.md.
"""

from __future__ import annotations

from simulations.synthetic.faces.generate import SynthFaceSet, generate_faces
from simulations.synthetic.faces.params import SKIN_TONES, FaceDifficulty, SkinTone
from simulations.synthetic.faces.population import (FaceIdentity, FacePopulation, SynthSubject, sample_demographics,
                                                    sample_emotions, sample_identity, sample_subjects)
from simulations.synthetic.faces.render import render_face
from simulations.synthetic.faces.writers import RafdbRecord, rafdb_records, write_fer2013, write_rafdb

Population = FacePopulation  # the name callers used before the split

__all__ = ["SKIN_TONES", "FaceDifficulty", "FaceIdentity", "FacePopulation", "Population", "RafdbRecord",
           "SkinTone", "SynthFaceSet", "SynthSubject", "generate_faces", "rafdb_records", "render_face",
           "sample_demographics", "sample_emotions", "sample_identity", "sample_subjects", "write_fer2013",
           "write_rafdb"]
