"""The extension's contract: one registration, an adapter with a model, strict config keys."""

from __future__ import annotations

import pytest
from flask import Flask

from intranet_licenses import DEFAULTS, Licenses, UserAdapter
from intranet_licenses.extension import config


class _Users(UserAdapter):
    model = object  # never queried in these tests


def test_init_app_sets_every_default_without_overriding_the_host():
    app = Flask(__name__)
    app.config["LICENSES_URL_PREFIX"] = "/licensing"
    Licenses(app, _Users(db=None))
    assert app.config["LICENSES_URL_PREFIX"] == "/licensing"
    assert all(key in app.config for key in DEFAULTS)
    assert "licenses" in app.extensions
    assert app.url_map.bind("localhost").match("/licensing/summary")[0] == "licenses.summary"


def test_a_second_registration_is_refused():
    app = Flask(__name__)
    licenses = Licenses(app, _Users(db=None))
    with pytest.raises(RuntimeError, match="already registered"):
        licenses.init_app(app, _Users(db=None))


def test_an_adapter_without_a_model_is_refused():
    with pytest.raises(RuntimeError, match="needs a UserAdapter"):
        Licenses(Flask(__name__), UserAdapter(db=None))


def test_a_mistyped_config_key_fails_loudly():
    app = Flask(__name__)
    Licenses(app, _Users(db=None))
    with app.app_context():
        assert config("SITE_NAME") == "localhost"
        with pytest.raises(
            KeyError, match="LICENSES_SITE_NAM is not an intranet-licenses setting"
        ):
            config("SITE_NAM")


def test_every_refusal_the_extension_raises_derives_from_one_base():
    import importlib
    import inspect
    import pkgutil

    import intranet_licenses
    from intranet_licenses import LicensesError

    refusals = []
    for module_info in pkgutil.iter_modules(intranet_licenses.__path__):
        module = importlib.import_module(f"intranet_licenses.{module_info.name}")
        for _name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and issubclass(cls, Exception):
                refusals.append(cls)
    assert len(refusals) >= 12  # seats, license file, CSV, directory, SSO, requests, export ...
    assert [cls for cls in refusals if not issubclass(cls, LicensesError)] == []
