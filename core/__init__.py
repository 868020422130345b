"""The foundation every other layer stands on: settings, database, object store, version, migrations."""
