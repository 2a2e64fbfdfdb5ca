// The chat page: conversations on the left, the chosen one on the right, replies streamed from
// POST /v1/chat/completions as any OpenAI client would ask for them.
import { Api, isAbort } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { ModelPicker } from "./models.js";
import { Store, newConversation } from "./store.js";

const $ = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const TITLE_LENGTH = 48;

class ChatPage {
  constructor() {
    this.store = new Store();
    this.api = new Api(() => this.store.apiKey);
    this.streaming = null; // { controller, message } while a reply is being generated
    this.views = new WeakMap(); // message -> its article on the page
    this.renderQueued = new Set();
    this.picker = new ModelPicker(
      this.api,
      { select: $("model"), state: $("model-state"), loadButton: $("load-model") },
      {
        preferred: this.store.preferences.model,
        onChange: (id) => {
          this.store.preferences.model = id;
          this.store.save();
        },
        onFailure: (error) => this.showFailure(error),
      },
    );
    if (!this.store.find(this.store.currentId)) {
      const latest = this.store.sorted()[0];
      this.store.currentId = latest ? latest.id : this.createConversation().id;
    }
    this.bind();
    this.renderSidebar();
    this.renderConversation();
    this.picker.refresh();
  }

  get current() {
    return this.store.find(this.store.currentId);
  }

  bind() {
    $("new-chat").addEventListener("click", () => this.startConversation());
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    $("prompt").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send();
      }
    });
    $("stop").addEventListener("click", () => this.streaming?.controller.abort());
    $("settings-toggle").addEventListener("click", () => {
      const settings = $("settings");
      settings.hidden = !settings.hidden;
      $("settings-toggle").setAttribute("aria-expanded", String(!settings.hidden));
    });
    $("system").addEventListener("input", () => {
      const conversation = this.current;
      conversation.system = $("system").value;
      this.store.save();
    });
    for (const [id, name] of [
      ["temperature", "temperature"],
      ["max-tokens", "maxTokens"],
    ]) {
      $(id).value = this.store.preferences[name];
      $(id).addEventListener("change", () => {
        this.store.preferences[name] = $(id).value;
        this.store.save();
      });
    }
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.useKey($("api-key").value.trim());
    });
    $("forget-key").addEventListener("click", () => {
      this.store.apiKey = "";
      $("forget-key").hidden = true;
      this.picker.refresh();
    });
    $("forget-key").hidden = !this.store.apiKey;
  }

  // Conversations

  createConversation() {
    const conversation = newConversation();
    this.store.add(conversation);
    return conversation;
  }

  startConversation() {
    const current = this.current;
    if (current && current.messages.length === 0) {
      $("prompt").focus();
      return;
    }
    this.open(this.createConversation().id);
  }

  open(id) {
    this.store.currentId = id;
    this.store.save();
    this.renderSidebar();
    this.renderConversation();
    $("prompt").focus();
  }

  remove(id) {
    if (this.streaming && this.streaming.conversation.id === id) this.streaming.controller.abort();
    this.store.remove(id);
    if (this.store.currentId === id) {
      const next = this.store.sorted()[0];
      this.store.currentId = next ? next.id : this.createConversation().id;
      this.store.save();
      this.renderConversation();
    }
    this.renderSidebar();
  }

  rename(id, item) {
    const conversation = this.store.find(id);
    const input = element("input", "rename-input");
    input.value = conversation.title;
    input.setAttribute("aria-label", "Conversation name");
    let done = false;
    const finish = (keep) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (keep && title) {
        conversation.title = title;
        conversation.named = true;
        this.store.save();
      }
      this.renderSidebar();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") finish(true);
      if (event.key === "Escape") finish(false);
    });
    input.addEventListener("blur", () => finish(true));
    item.querySelector(".open").replaceWith(input);
    input.focus();
    input.select();
  }

  renderSidebar() {
    const list = $("conversations");
    list.replaceChildren(
      ...this.store.sorted().map((conversation) => {
        const item = element("li", "conversation");
        item.dataset.id = conversation.id;
        if (conversation.id === this.store.currentId) item.classList.add("current");
        const open = element("button", "open", conversation.title);
        open.type = "button";
        open.addEventListener("click", () => this.open(conversation.id));
        const rename = element("button", "rename", "✎");
        rename.type = "button";
        rename.title = "Rename";
        rename.setAttribute("aria-label", `Rename ${conversation.title}`);
        rename.addEventListener("click", () => this.rename(conversation.id, item));
        const remove = element("button", "delete", "✕");
        remove.type = "button";
        remove.title = "Delete";
        remove.setAttribute("aria-label", `Delete ${conversation.title}`);
        remove.addEventListener("click", () => {
          // Deleting takes a second click: a conversation exists nowhere else.
          if (remove.classList.contains("confirm")) {
            this.remove(conversation.id);
            return;
          }
          remove.classList.add("confirm");
          remove.textContent = "Delete?";
          setTimeout(() => {
            remove.classList.remove("confirm");
            remove.textContent = "✕";
          }, 4000);
        });
        item.append(open, rename, remove);
        return item;
      }),
    );
  }

  renderConversation() {
    const conversation = this.current;
    $("system").value = conversation.system;
    const messages = $("messages");
    const views = conversation.messages.map((message) => this.messageView(message));
    const empty = element("p", null, "Ask the model anything. Replies stream as they are generated.");
    empty.id = "empty-state";
    messages.replaceChildren(...(views.length ? views : [empty]));
    this.updateActions();
    messages.scrollTop = messages.scrollHeight;
  }

  // Messages

  messageView(message) {
    const article = element("article", `message ${message.role}`);
    if (message.role === "user") {
      article.append(element("div", "content plain", message.content));
      return article;
    }
    article.append(element("div", "who", message.model ?? ""), element("div", "content markdown"));
    article.append(element("p", "error"), element("footer", "figures"));
    const actions = element("div", "actions");
    const regenerate = element("button", "regenerate", "Regenerate");
    regenerate.type = "button";
    regenerate.addEventListener("click", () => this.regenerate());
    actions.append(regenerate);
    article.append(actions);
    this.views.set(message, article);
    this.updateView(message);
    return article;
  }

  updateView(message) {
    const article = this.views.get(message);
    if (!article) return;
    article.dataset.state = message.state;
    renderMarkdown(article.querySelector(".content"), message.content);
    const error = article.querySelector(".error");
    error.textContent = message.error ?? "";
    error.hidden = !message.error;
    article.querySelector(".figures").replaceChildren(...figures(message));
  }

  queueRender(message) {
    // Markdown is re-rendered at most once a frame, however fast the tokens come.
    if (this.renderQueued.has(message)) return;
    this.renderQueued.add(message);
    requestAnimationFrame(() => {
      this.renderQueued.delete(message);
      const messages = $("messages");
      const atBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 40;
      this.updateView(message);
      if (atBottom) messages.scrollTop = messages.scrollHeight;
    });
  }

  updateActions() {
    const busy = this.streaming !== null;
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    const messages = this.current.messages;
    const last = messages[messages.length - 1];
    for (const article of $("messages").querySelectorAll("article.assistant")) {
      const isLast = last && this.views.get(last) === article;
      article.querySelector(".actions").hidden = busy || !isLast;
    }
  }

  // Sending

  send() {
    const prompt = $("prompt");
    const text = prompt.value.trim();
    if (!text || this.streaming) return;
    const conversation = this.current;
    conversation.messages.push({ role: "user", content: text });
    if (!conversation.named && conversation.messages.filter((m) => m.role === "user").length === 1) {
      conversation.title = text.length > TITLE_LENGTH ? `${text.slice(0, TITLE_LENGTH - 1)}…` : text;
    }
    prompt.value = "";
    this.reply(conversation);
  }

  regenerate() {
    const conversation = this.current;
    if (this.streaming || conversation.messages.at(-1)?.role !== "assistant") return;
    conversation.messages.pop();
    this.reply(conversation);
  }

  async reply(conversation) {
    const model = this.picker.selected;
    const message = { role: "assistant", content: "", model, state: "streaming" };
    const history = requestMessages(conversation);
    conversation.messages.push(message);
    conversation.updated = Date.now();
    this.store.save();
    this.renderSidebar();
    this.renderConversation();
    const controller = new AbortController();
    this.streaming = { controller, message, conversation };
    this.updateActions();
    this.hideNotice();

    const body = {
      model,
      messages: history,
      stream: true,
      stream_options: { include_usage: true },
    };
    const { temperature, maxTokens } = this.store.preferences;
    if (temperature !== "" && temperature !== null) body.temperature = Number(temperature);
    if (maxTokens !== "" && maxTokens !== null) body.max_tokens = Number(maxTokens);

    const started = performance.now();
    let firstToken = null;
    let lastToken = null;
    let usage = null;
    let finish = null;
    try {
      for await (const data of this.api.chatStream(body, controller.signal)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(`The reply failed: ${chunk.error.message}`);
        const choice = chunk.choices?.[0];
        const piece = choice?.delta?.content;
        if (piece) {
          lastToken = performance.now();
          firstToken ??= lastToken;
          message.content += piece;
          this.queueRender(message);
        }
        if (choice?.finish_reason) finish = choice.finish_reason;
        if (chunk.usage) usage = chunk.usage;
      }
      message.state = "done";
    } catch (error) {
      message.state = isAbort(error) ? "stopped" : "error";
      if (!isAbort(error)) {
        message.error = error.message;
        if (error.kind === "auth") this.askForKey(error.message);
        if (error.kind === "model") this.picker.refresh();
      }
    }
    message.stats = {
      tokens: usage?.completion_tokens ?? null,
      promptTokens: usage?.prompt_tokens ?? null,
      firstTokenMs: firstToken === null ? null : firstToken - started,
      // Generation speed: the tokens after the first, over the time they took.
      tokensPerSecond:
        usage && usage.completion_tokens > 1 && lastToken > firstToken
          ? ((usage.completion_tokens - 1) * 1000) / (lastToken - firstToken)
          : null,
      finish,
    };
    this.streaming = null;
    conversation.updated = Date.now();
    if (!this.store.save()) this.showNotice("This browser's storage is full or turned off: the conversation will not be kept.");
    this.updateView(message);
    this.updateActions();
  }

  // Keys and failures

  askForKey(text) {
    $("key-message").textContent = text;
    $("key-panel").hidden = false;
    $("api-key").focus();
  }

  async useKey(key) {
    this.store.apiKey = key;
    $("forget-key").hidden = !key;
    if (await this.picker.refresh()) {
      $("key-panel").hidden = true;
      $("api-key").value = "";
      this.hideNotice();
    }
  }

  showFailure(error) {
    if (error.kind === "auth") {
      this.askForKey(error.message);
      return;
    }
    this.showNotice(error.message);
  }

  showNotice(text) {
    $("notice").textContent = text;
    $("notice").hidden = false;
  }

  hideNotice() {
    $("notice").hidden = true;
  }
}

function requestMessages(conversation) {
  const messages = [];
  if (conversation.system.trim()) messages.push({ role: "system", content: conversation.system });
  for (const message of conversation.messages) {
    // A failed reply has nothing to say; a stopped one said what it said.
    if (message.role === "assistant" && !message.content) continue;
    messages.push({ role: message.role, content: message.content });
  }
  return messages;
}

function figures(message) {
  const stats = message.stats;
  const parts = [];
  const figure = (className, text) => parts.push(element("span", className, text));
  if (message.state === "streaming") figure("streaming", "generating…");
  if (message.state === "stopped") figure("stopped", "stopped");
  if (!stats) return parts;
  if (stats.tokens !== null) figure("tokens", `${stats.tokens} tokens`);
  if (stats.tokensPerSecond !== null) figure("rate", `${stats.tokensPerSecond.toFixed(1)} tokens/s`);
  if (stats.firstTokenMs !== null) figure("first-token", `first token ${Math.round(stats.firstTokenMs)} ms`);
  if (stats.finish === "length") figure("cut", "cut at the token limit");
  return parts;
}

new ChatPage();
