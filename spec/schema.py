"""JSON Schema of the spec file, for editors: `spec/mobilenets.schema.json`, written by `make generate`."""

from __future__ import annotations

import json

from spec.model import Spec

ROW_VALUE = {"type": ["integer", "number", "boolean", "string", "null"]}


def json_schema() -> dict:
    schema = Spec.model_json_schema(by_alias=True, mode="validation")
    schema["title"] = "MobileNet Forge spec (spec/mobilenets.yaml)"
    # The YAML writes a stage table as `columns` plus `rows` of plain values; the loader maps each row
    # to the row model (whose fields the columns name), so the file's rows are arrays here (or mappings).
    for name, definition in schema.get("$defs", {}).items():
        if name.endswith("Table"):
            row_model = definition["properties"]["rows"]["items"]["$ref"].rsplit("/", 1)[1]
            definition["properties"]["rows"] = {
                "type": "array", "minItems": 1,
                "items": {"anyOf": [{"type": "array", "items": ROW_VALUE},
                                    {"type": "object", "additionalProperties": ROW_VALUE}]},
                "description": f"one list of values per row, in the order of `columns`, or a mapping of "
                               f"field to value (fields of {row_model})",
            }
            definition["properties"]["columns"]["items"] = {"enum": sorted(_names(row_model))}
    return schema


def _names(row_model: str) -> set[str]:
    from spec import model

    cls = getattr(model, row_model)
    return {name for name in cls.model_fields} | {f.alias for f in cls.model_fields.values() if f.alias}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
