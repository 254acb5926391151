"""Data: image folders with ``metadata.jsonl`` (:mod:`.folder`) and the built-in shapes world (:mod:`.shapes`)."""
