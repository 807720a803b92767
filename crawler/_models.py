"""Records the crawler produces."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ImageRef", "Tag"]


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image of one repository.

    ``project_id`` is ``None`` for the account's default project, whose id the
    API does not report.
    """

    project_id: str | None
    repo_name: str
    image_name: str


@dataclass(frozen=True, slots=True)
class Tag:
    """One tag of one image, as exported.

    ``update_time`` is passed through as the API sent it: usually a string,
    sometimes an integer.  ``digest`` is ``None`` when the API sent none.
    """

    project_id: str | None
    repo_name: str
    image_name: str
    tag_name: str
    digest: str | None
    update_time: str | int

    def to_dict(self) -> dict[str, object]:
        """Return the record as the JSON Lines export writes it."""
        return {
            "project_id": self.project_id,
            "repo_name": self.repo_name,
            "image_name": self.image_name,
            "tag_name": self.tag_name,
            "digest": self.digest,
            "update_time": self.update_time,
        }
