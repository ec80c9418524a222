"""Errors a user can hit. Each carries a message that says what and where.

The command-line tools catch ``QccError`` and print its message without a
traceback; anything else escaping is a bug in qcc.
"""


class QccError(Exception):
    """Base of every error qcc reports to users as a message."""

    exit_code = 1


class IRError(QccError):
    """A malformed graph or a misuse of the graph API; the message names the op."""


class OpError(IRError):
    """An op that breaks its definition's rules."""


class ParseError(QccError):
    """Bad IR text: carries file, line and column, printed as ``file:line:col: message``."""

    def __init__(self, message: str, filename: str = "<string>", line: int = 0, column: int = 0,
                 source_line: str = ""):
        self.message, self.filename, self.line, self.column = message, filename, line, column
        self.source_line = source_line
        super().__init__(self.format())

    def format(self) -> str:
        text = f"{self.filename}:{self.line}:{self.column}: error: {self.message}"
        if self.source_line:
            line, caret = self.source_line.rstrip("\n"), max(self.column - 1, 0)
            if len(line) > 120:  # show a window around the column, not a megabyte of one line
                start = max(caret - 60, 0)
                line, caret = line[start:start + 120], caret - start
            text += "\n" + line + "\n" + " " * caret + "^"
        return text


class PassError(QccError):
    """A pass failed or left an invalid graph; the message names the pass and those before it."""


class UnsupportedModelError(QccError):
    """The model uses ops or features qcc cannot compile; lists every offending node."""

    exit_code = 2


class InputError(QccError):
    """Bad user input other than IR text: data files, options, shapes."""
