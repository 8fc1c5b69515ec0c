"""The base of every refusal the extension raises (the shape of itsdangerous' exceptions).

Each module defines its own errors next to the code that raises them (``seats.SeatError``,
``license_file.LicenseFileError``, ``csv_import.ImportFileError`` ...); all of them derive
from :class:`LicensesError`, so a host can catch "anything the extension refused" in one
``except`` and show ``str(error)``, which is always a sentence for a person.
"""


class LicensesError(Exception):
    """Something the extension refused; ``str(error)`` says what was wrong and what to do."""
