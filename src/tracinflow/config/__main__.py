"""``python -m tracinflow.config SCHEMA README``: refresh README's key reference from the schema
(``make config-docs`` runs it on config/README.md)."""

import sys
from pathlib import Path

from tracinflow.config import load_schema, with_reference


def main(schema_path: str, readme_path: str) -> None:
    readme = Path(readme_path)
    readme.write_text(with_reference(readme.read_text(), load_schema(schema_path)))


if __name__ == "__main__":
    main(*sys.argv[1:3])
