"""Token layout of one attention call: where the text and the video tokens sit in the sequence."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenLayout:
    """Where text and video tokens are in a joint sequence.

    Video tokens are ``frames * height * width`` consecutive tokens starting at ``video_start``,
    flattened frame-major (frame, row, column), as every supported family patchifies them.
    ``text`` is the half-open range ``(start, stop)`` of text tokens, or ``None``.
    """

    frames: int
    height: int
    width: int
    video_start: int = 0
    text: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if min(self.frames, self.height, self.width) < 1:
            raise ValueError(f"TokenLayout needs a positive video grid, got {self.grid}")
        if self.video_start < 0:
            raise ValueError(f"TokenLayout.video_start must be >= 0, got {self.video_start}")
        if self.text is not None:
            start, stop = self.text
            if not 0 <= start <= stop:
                raise ValueError(f"TokenLayout.text must be a range (start, stop), got {self.text}")
            video = range(self.video_start, self.video_stop)
            if start < video.stop and video.start < stop:
                raise ValueError(f"text range {self.text} overlaps the video tokens {video.start}:{video.stop}")

    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.frames, self.height, self.width)

    @property
    def tokens_per_frame(self) -> int:
        return self.height * self.width

    @property
    def num_video(self) -> int:
        return self.frames * self.height * self.width

    @property
    def video_stop(self) -> int:
        return self.video_start + self.num_video

    @property
    def num_text(self) -> int:
        return 0 if self.text is None else self.text[1] - self.text[0]

    def tiles(self, max_tiles: int) -> tuple[int, int]:
        """(tokens per tile, number of tiles) when the video tokens are cut, in sequence order, into
        at most ``max_tiles`` tiles of equal size (the last one may be shorter)."""
        if max_tiles < 1:
            raise ValueError(f"the number of map tiles must be positive, got {max_tiles}")
        size = -(-self.num_video // max_tiles)
        return size, -(-self.num_video // size)

    def check_fits(self, num_tokens: int) -> None:
        """Raise ValueError unless the layout fits a sequence of ``num_tokens`` tokens. Without text, the video
        must be the whole sequence: a layout of a part of it is a wrong grid (the frame maps' rows would sum to
        the part's mass, not 1). With text, other tokens may sit beside both (their mass is in neither)."""
        stop = max(self.video_stop, self.text[1] if self.text else 0)
        if stop > num_tokens:
            raise ValueError(f"layout {self} needs {stop} tokens but the sequence has {num_tokens}")
        if self.text is None and self.num_video != num_tokens:
            raise ValueError(
                f"layout {self} covers {self.num_video} of the sequence's {num_tokens} tokens and has no text: "
                "without text the video grid must cover the whole sequence"
            )

    def to_dict(self) -> dict:
        return {
            "frames": self.frames,
            "height": self.height,
            "width": self.width,
            "video_start": self.video_start,
            "text": list(self.text) if self.text is not None else None,
        }
