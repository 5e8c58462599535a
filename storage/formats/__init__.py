"""Dataset import/export formats: pure functions from files to conversations and back (no database).

Import: alpaca, sharegpt, OpenAI messages, guanaco text, input/target pairs, CSV and XLSX with a column
mapping. Export: messages JSONL (what TRL reads), alpaca, sharegpt; voted answers as KTO JSONL. The DB
layer stores what comes out.
"""
from storage.formats.detect import FORMATS
from storage.formats.errors import ImportFormatError
from storage.formats.export import EXPORT_FORMATS, EXPORT_SUFFIXES, export_conversations, export_preferences
from storage.formats.importer import ImportedRow, ImportResult, SkippedRow, parse_file
from storage.formats.turns import TOOL_SKIP_REASON

__all__ = ["EXPORT_FORMATS", "EXPORT_SUFFIXES", "FORMATS", "ImportFormatError", "ImportResult", "ImportedRow",
           "SkippedRow", "TOOL_SKIP_REASON", "export_conversations", "export_preferences", "parse_file"]
