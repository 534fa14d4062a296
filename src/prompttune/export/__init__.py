"""Export learned prompts to other libraries' formats, and import theirs."""

from .peft import export_peft, import_peft

__all__ = ["export_peft", "import_peft"]
