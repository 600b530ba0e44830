"""What every config section shares: the Section base, the marks that say which fields are in an artifact's key
(IN_NO_KEY, IN_KEY_WHEN_SET), and the device pattern."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

# A field marked IN_NO_KEY changes nothing an artifact holds (how the work is spread, where it runs, how a training
# step is computed, where it is tracked): it is in no artifact's key, and a run may be resumed with it changed.
IN_NO_KEY: dict[str, Any] = {"in_key": False}
# The one lineage rule for a field added after runs were made: it stays out of the key while it holds its default
# (so those runs' artifacts keep their ids) and joins it once set. Mark every new keyed field with it; a field that
# only acts with another (bc.patience, with bc.valid_every) follows that one: in_key_when_set_by(sibling).
IN_KEY_WHEN_SET: dict[str, Any] = {"in_key": "when_set"}


def in_key_when_set_by(switch: str) -> dict[str, Any]:
    """IN_KEY_WHEN_SET, decided by the sibling field `switch`: in the key while `switch` is set."""
    return {"in_key": "when_set", "switch": switch}


def in_key(field: Any) -> bool:
    """Whether a config field is part of the key of the artifacts its section makes (when set, for IN_KEY_WHEN_SET)."""
    extra = field.json_schema_extra
    return not isinstance(extra, dict) or extra.get("in_key", True) is not False


def in_key_when_set(field: Any) -> str | None:
    """For a field marked IN_KEY_WHEN_SET, the field whose value decides (itself: ""; a sibling's name); else None."""
    extra = field.json_schema_extra
    if isinstance(extra, dict) and extra.get("in_key") == "when_set":
        return extra.get("switch", "")
    return None


def unkeyed_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """The dotted keys marked IN_NO_KEY under `model` (a marked section: every key under it)."""
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if not in_key(field):
            out.append(prefix + name)
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(unkeyed_keys(ann, prefix + name + "."))
    return out


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d+|mps)$"
