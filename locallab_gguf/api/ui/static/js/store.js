// Conversations and preferences, kept in this browser's localStorage for this server's origin.

const CONVERSATIONS = "locallab-gguf.conversations";
const CURRENT = "locallab-gguf.current";
const PREFERENCES = "locallab-gguf.preferences";
const API_KEY = "locallab-gguf.api-key";

export function newId() {
  // crypto.randomUUID exists only in secure contexts; this page may be served over plain http.
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
}

export function newConversation(system = "") {
  return { id: newId(), title: "New chat", named: false, system, messages: [], updated: Date.now() };
}

function read(key, fallback) {
  try {
    const text = localStorage.getItem(key);
    return text === null ? fallback : JSON.parse(text);
  } catch {
    return fallback; // unreadable (another version's data, or storage turned off)
  }
}

function write(key, value) {
  try {
    localStorage.setItem(key, typeof value === "string" ? value : JSON.stringify(value));
    return true;
  } catch {
    return false; // full, or turned off; the page keeps working for this visit
  }
}

export class Store {
  constructor() {
    const saved = read(CONVERSATIONS, []);
    this.conversations = Array.isArray(saved) ? saved.filter((c) => c && c.id && Array.isArray(c.messages)) : [];
    this.currentId = localStorage.getItem(CURRENT);
    this.preferences = { model: null, temperature: "", maxTokens: "", ...read(PREFERENCES, {}) };
  }

  get apiKey() {
    return localStorage.getItem(API_KEY) ?? "";
  }

  set apiKey(key) {
    if (key) write(API_KEY, key);
    else localStorage.removeItem(API_KEY);
  }

  sorted() {
    return [...this.conversations].sort((a, b) => b.updated - a.updated);
  }

  find(id) {
    return this.conversations.find((conversation) => conversation.id === id) ?? null;
  }

  add(conversation) {
    this.conversations.push(conversation);
    return this.save();
  }

  remove(id) {
    this.conversations = this.conversations.filter((conversation) => conversation.id !== id);
    return this.save();
  }

  save() {
    // A reply being generated is kept as far as it got, marked as cut short.
    const snapshot = this.conversations.map((conversation) => ({
      ...conversation,
      messages: conversation.messages.map((message) =>
        message.state === "streaming" ? { ...message, state: "stopped" } : message,
      ),
    }));
    write(CURRENT, this.currentId ?? "");
    write(PREFERENCES, this.preferences);
    return write(CONVERSATIONS, snapshot);
  }
}
