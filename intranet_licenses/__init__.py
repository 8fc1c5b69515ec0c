"""intranet-licenses: user-license (seat) management for Flask intranets."""

from .access import LoginRefusal, login_refusal
from .errors import LicensesError
from .extension import DEFAULTS, Licenses, UserAdapter
from .seats import PersonError, SeatError, SeatLimitExceeded, last_refusal
from .sso import SignInRefused, sign_in

__all__ = [
    "DEFAULTS",
    "Licenses",
    "LicensesError",
    "LoginRefusal",
    "PersonError",
    "SeatError",
    "SeatLimitExceeded",
    "SignInRefused",
    "UserAdapter",
    "last_refusal",
    "login_refusal",
    "sign_in",
]
