"""A short list of what clinicians segment, with SNOMED CT codes (as 3D Slicer's terminology
offers them), for naming objects and for the coded segment descriptions of a DICOM SEG.

Codes come from pydicom's DICOM code dictionary (``pydicom.sr.codedict.codes.SCT``), looked up
by name, so no code is typed in here by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Term", "TERMS", "find_term", "coded"]

_ANATOMY = "AnatomicalStructure"
_ABNORMAL = "MorphologicallyAbnormalStructure"

#: (display name, pydicom SCT attribute, category attribute)
_LIST = (
    ("Liver", "Liver", _ANATOMY),
    ("Spleen", "Spleen", _ANATOMY),
    ("Kidney", "Kidney", _ANATOMY),
    ("Pancreas", "Pancreas", _ANATOMY),
    ("Gallbladder", "Gallbladder", _ANATOMY),
    ("Stomach", "Stomach", _ANATOMY),
    ("Esophagus", "Esophagus", _ANATOMY),
    ("Colon", "Colon", _ANATOMY),
    ("Urinary bladder", "Bladder", _ANATOMY),
    ("Aorta", "Aorta", _ANATOMY),
    ("Heart", "Heart", _ANATOMY),
    ("Lung", "Lung", _ANATOMY),
    ("Breast", "Breast", _ANATOMY),
    ("Brain", "Brain", _ANATOMY),
    ("Skull", "Skull", _ANATOMY),
    ("Head (fetal head)", "Head", _ANATOMY),
    ("Prostate", "Prostate", _ANATOMY),
    ("Uterus", "Uterus", _ANATOMY),
    ("Ovary", "Ovary", _ANATOMY),
    ("Femur", "Femur", _ANATOMY),
    ("Bone", "Bone", _ANATOMY),
    ("Neoplasm (tumour)", "Neoplasm", _ABNORMAL),
    ("Lesion", "Lesion", _ABNORMAL),
    ("Mass", "Mass", _ABNORMAL),
    ("Nodule", "Nodule", _ABNORMAL),
    ("Cyst", "Cyst", _ABNORMAL),
)


@dataclass(frozen=True)
class Term:
    """One entry: what to call it and how DICOM codes it (SNOMED CT)."""

    name: str
    code: str  # SNOMED CT concept id
    meaning: str
    category_code: str
    category_meaning: str


def _build() -> tuple[Term, ...]:
    from pydicom.sr.codedict import codes

    out = []
    for name, attr, category in _LIST:
        c, cat = getattr(codes.SCT, attr), getattr(codes.SCT, category)
        out.append(Term(name, str(c.value), str(c.meaning), str(cat.value), str(cat.meaning)))
    return tuple(out)


_TERMS: tuple[Term, ...] | None = None


def TERMS() -> tuple[Term, ...]:  # noqa: N802 - a constant, built on first use
    """All terms, in the order the pick list shows them."""
    global _TERMS
    if _TERMS is None:
        _TERMS = _build()
    return _TERMS


def find_term(name: str) -> Term | None:
    """The term a typed or picked name means (case-insensitive; "liver" is Liver)."""
    key = str(name).strip().lower()
    for t in TERMS():
        if key in (t.name.lower(), t.meaning.lower()):
            return t
    return None


def coded(name: str) -> dict[str, tuple[str, str, str]] | None:
    """``{"category": (code, "SCT", meaning), "type": (...)}`` for a known name, else None."""
    t = find_term(name)
    if t is None:
        return None
    return {"category": (t.category_code, "SCT", t.category_meaning),
            "type": (t.code, "SCT", t.meaning)}
