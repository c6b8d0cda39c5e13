"""Date and time formats of the admin (settings.FORMAT_MODULE_PATH): a module per language."""
