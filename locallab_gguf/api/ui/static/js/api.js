// The server's public API, as any client calls it, and its failures in words a person can act on.

export class ApiError extends Error {
  // kind: "auth" | "rate" | "unavailable" | "network" | "model" | "server"
  constructor(kind, message, { status = null, retryAfter = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.kind = kind;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

export const isAbort = (error) => error?.name === "AbortError";

const UNREACHABLE =
  "Cannot reach the server: check that it is still running and that this computer is online, " +
  "then try again.";
const LOST = "The connection to the server was lost mid-reply; the reply above is incomplete.";

export class Api {
  constructor(key) {
    this.key = key; // a function giving the API key, or "" when none is set
  }

  async request(path, { method = "GET", body, signal } = {}) {
    const headers = {};
    const key = this.key();
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: "no-store",
      });
    } catch (error) {
      if (isAbort(error)) throw error;
      throw new ApiError("network", UNREACHABLE);
    }
    if (!response.ok) throw await failureOf(response, Boolean(key));
    return response;
  }

  async json(path, options) {
    const response = await this.request(path, options);
    return response.json();
  }

  // The data of each server-sent event of a streamed chat completion, "[DONE]" included.
  async *chatStream(body, signal) {
    const response = await this.request("/v1/chat/completions", { method: "POST", body, signal });
    yield* eventData(response.body);
  }
}

async function failureOf(response, keySent) {
  const message = await serverMessage(response);
  const status = response.status;
  if (status === 401) {
    return new ApiError(
      "auth",
      keySent
        ? "The server refused this API key. Check it and enter it again."
        : "This server needs an API key. Enter it above.",
      { status },
    );
  }
  if (status === 429) {
    const seconds = retrySeconds(response.headers.get("Retry-After"));
    const wait = seconds === null ? "in a moment" : `in ${seconds} s`;
    return new ApiError(
      "rate",
      `Too many requests: the server's rate limit lets this client send again ${wait}.`,
      { status, retryAfter: seconds },
    );
  }
  if (status === 503) {
    const seconds = retrySeconds(response.headers.get("Retry-After"));
    const when = seconds === null ? "shortly" : `in ${seconds} s`;
    return new ApiError(
      "unavailable",
      `The server cannot answer right now: ${sentence(message)} Try again ${when}.`,
      { status, retryAfter: seconds },
    );
  }
  if (status === 404 && /model/i.test(message)) {
    const said = sentence(message);
    return new ApiError(
      "model",
      `${said[0].toUpperCase()}${said.slice(1)} Load it with the button beside the model picker.`,
      { status },
    );
  }
  return new ApiError("server", `The server answered ${status}: ${message}`, { status });
}

function sentence(text) {
  return /[.!?]$/.test(text.trim()) ? text.trim() : `${text.trim()}.`;
}

async function serverMessage(response) {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    // OpenAI's shape under /v1, LocalLab's elsewhere.
    return body?.error?.message ?? body?.detail ?? text;
  } catch {
    return text || response.statusText;
  }
}

function retrySeconds(header) {
  if (header === null) return null;
  const seconds = Number(header);
  if (Number.isFinite(seconds)) return Math.max(0, Math.ceil(seconds));
  const date = Date.parse(header); // Retry-After may also be an HTTP date
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

async function* eventData(stream) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let data = [];
  for (;;) {
    let read;
    try {
      read = await reader.read();
    } catch (error) {
      if (isAbort(error)) throw error;
      throw new ApiError("network", LOST);
    }
    buffer += decoder.decode(read.value ?? new Uint8Array(), { stream: !read.done });
    const lines = buffer.split("\n");
    buffer = read.done ? "" : lines.pop();
    for (const raw of lines) {
      const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      if (line === "") {
        if (data.length) yield data.join("\n");
        data = [];
      } else if (line.startsWith("data:")) {
        data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      }
    }
    if (read.done) {
      if (data.length) yield data.join("\n");
      return;
    }
  }
}
