"""The one place a turn's limits are checked, for both front ends: text, images, options, a conversation's size."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.config import Settings
from gateway.core.request import RequestMessage, SamplingOptions, TurnRequest
from gateway.engine.contract import AdapterLoader, Engine
from gateway.errors import ErrorCode, GatewayError


class TurnLimits:
    """Limits that are settings (the schemas know only the fixed ones); each refusal names its field."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine

    @property
    def models(self) -> list[str]:
        return [self.engine.model_id, *self.engine.adapters]

    def check_turn(self, request: TurnRequest) -> None:
        self.check_text(request.text, "text")
        self.check_images(len(request.images) + len(request.image_urls))
        self.check_videos(len(request.videos))
        if request.options is not None:
            self.check_options(request.options)

    def check_conversation(self, messages: Sequence[RequestMessage], options: SamplingOptions) -> None:
        """A stateless conversation: as many messages as a session's history holds, each text within bounds."""
        most = 2 * self.settings.max_history_turns + 2
        if len(messages) > most:
            raise GatewayError(ErrorCode.TOO_LARGE, f"at most {most} messages", field="messages")
        for message in messages:
            self.check_text(message.text, "a message's text", message.field)
        urls = [message.field for message in messages for _ in message.image_urls]
        self.check_images(len(urls), urls[0] if urls else "messages", "messages")
        videos = [message.field for message in messages for _ in message.video_urls]
        self.check_videos(len(videos), videos[0] if videos else "messages")
        self.check_options(options)

    def check_text(self, text: str, what: str, field: str = "text") -> None:
        """Client text that joins the history (a turn's, a tool result's) is at most max_text_chars."""
        limit = self.settings.max_text_chars
        if len(text) > limit:
            raise GatewayError(ErrorCode.TOO_LARGE, f"{what} is {len(text)} characters; the limit is {limit}", field=field)

    def check_images(self, count: int, field: str = "images", count_field: str = "images") -> None:
        self._check_media(count, "images", self.settings.max_images_per_turn, field, count_field)

    def check_videos(self, count: int, field: str = "videos") -> None:
        """Videos reach the model as their frames (images): a text-only model takes none."""
        self._check_media(count, "videos", self.settings.max_videos_per_turn, field, field)

    def _check_media(self, count: int, kind: str, most: int, field: str, count_field: str) -> None:
        if count and not self.engine.vision:
            takes = "images" if kind == "images" else "images, so neither videos"
            raise GatewayError(
                ErrorCode.IMAGES_UNSUPPORTED, f"the served model cannot take {takes}; send turns without them", field=field
            )
        if count > most:
            raise GatewayError(ErrorCode.TOO_LARGE, f"{count} {kind}; the limit is {most} per turn", field=count_field)

    def check_options(self, options: SamplingOptions) -> None:
        """The limits on sampling options that the schema alone cannot know (they are settings)."""
        limit = self.settings.max_tokens_limit
        if options.max_tokens is not None and options.max_tokens > limit:
            message = f"max_tokens {options.max_tokens} is above the limit of {limit}"
            raise GatewayError(ErrorCode.INVALID_FIELD, message, field="max_tokens")
        if options.stop is not None and len(options.stop) > self.settings.max_stop_strings:
            raise GatewayError(ErrorCode.TOO_LARGE, f"at most {self.settings.max_stop_strings} stop strings", field="stop")
        if options.model is not None:
            self.adapter_for(options.model)

    def adapter_for(self, model: str | None) -> str | None:
        """The adapter a model id selects (None: the base model), or `invalid_field` naming the ids."""
        if model is None or model == self.engine.model_id:
            return None
        if model in self.engine.adapters:
            return model
        if isinstance(self.engine, AdapterLoader) and self.engine.unloading(model):
            raise GatewayError(ErrorCode.NOT_FOUND, f"the adapter {model[:100]!r} is being unloaded", field="model")
        message = f"unknown model {model[:100]!r}; this server has {', '.join(self.models)}"
        raise GatewayError(ErrorCode.INVALID_FIELD, message, field="model")
