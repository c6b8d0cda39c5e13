from django.db import models


class OsType(models.TextChoices):
    LINUX = "linux", "Linux"
    WINDOWS = "windows", "Windows"
    BSD = "bsd", "BSD"
    OTHER = "other", "Other"
    UNKNOWN = "", "Unknown"
