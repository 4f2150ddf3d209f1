"""Names on Pub/Sub: the ``gcppubsub://<project>/<subscription>`` URL, topics and subscriptions.

* A queue is a topic named after it (a task's RoutingKey, else the default queue).
* The subscription named in the URL belongs to the default queue; any other queue
  ``q`` is read through a subscription also called ``q``.
* Dead letters of a subscription ``s`` go to the topic ``s.dead``, read through a
  subscription of the same name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ...config import ConfigError
from ...urls import mask_url

__all__ = ["DEAD_SUFFIX", "PubSubNames", "check_name"]

DEAD_SUFFIX = ".dead"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
_PROJECT = re.compile(r"[a-z][a-z0-9\-.:]{1,62}[a-z0-9]")


def check_name(name: str, what: str) -> str:
    """``name`` if Pub/Sub accepts it as a topic or subscription ID, else a clear ValueError."""
    if not _NAME.fullmatch(name) or name.lower().startswith("goog"):
        raise ValueError(
            f"{what} {name!r} is not a valid Pub/Sub name: 3 to 255 characters, starting with a "
            "letter, of letters, digits and - _ . ~ + %, not starting with 'goog'"
        )
    return name


@dataclass(frozen=True, slots=True)
class PubSubNames:
    """The project, the URL's subscription, and the resource paths derived from them."""

    project: str
    subscription: str
    default_queue: str

    @classmethod
    def from_url(cls, url: str, default_queue: str) -> PubSubNames:
        parts = urlsplit(url.strip())
        project = parts.netloc
        subscription = parts.path.strip("/")
        if parts.scheme.lower() != "gcppubsub" or not project or not subscription or "/" in subscription:
            raise ConfigError(
                f"a Pub/Sub broker URL is gcppubsub://<project>/<subscription>, not {mask_url(url)!r}"
            )
        if not _PROJECT.fullmatch(project):
            raise ConfigError(f"{project!r} in {mask_url(url)!r} is not a Google Cloud project ID")
        try:
            check_name(subscription, "the subscription")
        except ValueError as exc:
            raise ConfigError(f"{exc} (in {mask_url(url)!r})") from None
        return cls(project, subscription, default_queue)

    def topic_path(self, topic: str) -> str:
        return f"projects/{self.project}/topics/{topic}"

    def subscription_path(self, subscription: str) -> str:
        return f"projects/{self.project}/subscriptions/{subscription}"

    def subscription_of(self, queue: str) -> str:
        """The subscription a worker of ``queue`` reads."""
        return self.subscription if queue == self.default_queue else queue

    def dead_letters_of(self, subscription: str) -> str:
        """The topic (and subscription) holding ``subscription``'s dead letters."""
        return subscription + DEAD_SUFFIX
