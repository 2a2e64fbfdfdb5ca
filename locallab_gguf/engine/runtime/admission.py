"""A request on its way into the batch engine: rendered by the chat template, tokenized,
checked against the context, and made a job with its own sampler (off the engine thread, to
keep steps short)."""

from __future__ import annotations

from typing import Literal

from locallab_gguf.engine.runtime.chat_template import ChatTemplate
from locallab_gguf.engine.runtime.job import Job
from locallab_gguf.engine.runtime.llama import LlamaModel
from locallab_gguf.engine.runtime.sampling import Sampler
from locallab_gguf.engine.runtime.speculation import DraftState
from locallab_gguf.engine.runtime.text import StopMatcher
from locallab_gguf.engine.tools.prompt import ChatPrompter, PreparedChat
from locallab_gguf.engine.types import MAX_TOP_LOGPROBS, EngineConfig, GenerationRequest
from locallab_gguf.engine.worker.resume import Resume
from locallab_gguf.errors import InvalidRequest, PromptTooLong


class Admission:
    def __init__(self, model: LlamaModel, config: EngineConfig) -> None:
        self.model = model
        self._speculative = config.speculative and config.draft_max > 0
        self._draft_max = config.draft_max
        source = config.chat_template or model.chat_template()
        # Where the chat template came from, as EngineInfo reports it.
        self.template_source: Literal["gguf", "registry"] | None = (
            None if source is None else "registry" if config.chat_template else "gguf"
        )
        template = (
            ChatTemplate(source, model.bos_token, model.eos_token, model.control_texts())
            if source
            else None
        )
        self._prompter = (
            None
            if template is None
            else ChatPrompter(template, lambda text, markup: model.tokenize(text, False, markup))
        )

    def prepare(self, request: GenerationRequest) -> PreparedChat:
        if request.messages is None:
            assert request.prompt is not None
            tokens = self.model.tokenize(request.prompt, add_special=True)
            return PreparedChat(tokens=tokens, parser=None, grammar=None)
        if self._prompter is None:
            raise InvalidRequest(
                f"{self.model.path.name} has no chat template; use /generate with a raw prompt "
                "or set chat_template for this model in models.toml"
            )
        # The rendered template already holds the BOS token where the model wants one.
        return self._prompter.prepare(request.messages, request.chat)

    def job(
        self, job_id: int, request: GenerationRequest, resume: Resume | None, n_ctx: int
    ) -> Job:
        """The request as a job; raises when a context of `n_ctx` tokens cannot serve it.

        With `resume`, the request continues from the tokens it produced before the engine
        process that served it died: they are evaluated after its prompt."""
        prepared = self.prepare(request)
        tokens = list(prepared.tokens)
        if not tokens:
            # The first token is sampled from the logits of the prompt's last token.
            raise InvalidRequest("the prompt is empty (0 tokens); send at least one character")
        prompt_length = len(tokens)
        if resume is not None:
            tokens += resume.completion_tokens
        if len(tokens) >= n_ctx:
            raise PromptTooLong(len(tokens), n_ctx)
        if request.logprobs is not None and not 0 <= request.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(
                f"{request.logprobs} alternatives per token were asked for; "
                f"at most {MAX_TOP_LOGPROBS} are reported"
            )
        sampler = Sampler(request.sampling, self.model.vocab, self.model.n_vocab, prepared.grammar)
        job = Job(
            job_id,
            tokens,
            # A limit beyond the room left is no error, as in OpenAI's and Anthropic's APIs:
            # the answer runs until the context is full and ends as cut off by its length.
            min(request.max_tokens, n_ctx - prompt_length),
            StopMatcher(request.stop),
            sampler,
            request.logprobs,
            prepared.parser,
            request.cache_key,
        )
        if self._speculative and request.speculative is not False:
            job.drafting = DraftState(self._draft_max)
        if resume is not None:
            self._resume(job, prompt_length, resume)
        return job

    def _resume(self, job: Job, prompt_length: int, resume: Resume) -> None:
        """Bring the job to where it was: its sampler, count, held text and log-probabilities."""
        completion = resume.completion_tokens
        job.prompt_length = prompt_length
        job.completion_tokens = len(completion)
        job.sampler.resume(completion, resume.rng_draws)
        job.text.pending_logprobs = list(resume.held_logprobs)
        job.text.replay(self.model.piece(token) for token in completion)
