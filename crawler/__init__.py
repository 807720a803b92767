"""Export every image tag of a container registry through its Action-style API.

The public face of the package; the implementation lives in private modules.
"""

from ._client import Stats
from ._config import ApiConfig, Config, CrawlConfig, OutputConfig, load_config
from ._crawl import TagCrawler
from ._errors import (
    ApiError,
    AuthError,
    ConfigError,
    CrawlerError,
    EndpointError,
    FatalError,
    OutputError,
    ProjectError,
    RequestTimeoutError,
    TargetError,
    ThrottledError,
    TransientError,
)
from ._models import ImageRef, Tag
from ._signing import sign

__all__ = [
    "ApiConfig",
    "ApiError",
    "AuthError",
    "Config",
    "ConfigError",
    "CrawlConfig",
    "CrawlerError",
    "EndpointError",
    "FatalError",
    "ImageRef",
    "OutputConfig",
    "OutputError",
    "ProjectError",
    "RequestTimeoutError",
    "Stats",
    "Tag",
    "TagCrawler",
    "TargetError",
    "ThrottledError",
    "TransientError",
    "load_config",
    "sign",
]

__version__ = "0.1.0"
