"""intranet-licenses: user-license (seat) management for Flask intranets."""

from .access import LoginRefusal, login_refusal
from .extension import DEFAULTS, Licenses, UserAdapter
from .seats import PersonError, SeatError, SeatLimitExceeded, last_refusal

__all__ = [
    "DEFAULTS",
    "Licenses",
    "LoginRefusal",
    "PersonError",
    "SeatError",
    "SeatLimitExceeded",
    "UserAdapter",
    "last_refusal",
    "login_refusal",
]
