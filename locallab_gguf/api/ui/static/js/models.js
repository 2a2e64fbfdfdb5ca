// The model picker: the registry's models (GET /models/available) and the ones the server has
// resident (GET /v1/models), each with where it stands, and a button to load the chosen one.

const POLL_MS = 3000; // a load in progress is followed at 20 requests a minute, within any limit

const LABELS = {
  resident: () => "loaded",
  loading: () => "loading…",
  downloading: (entry) =>
    entry.total ? `downloading ${Math.floor((100 * entry.done) / entry.total)}%` : "downloading…",
  local: () => "on disk, not loaded",
  remote: (entry) => (entry.size ? `not downloaded, ${megabytes(entry.size)}` : "not downloaded"),
};

function megabytes(bytes) {
  return bytes >= 1e9 ? `${(bytes / 1e9).toFixed(1)} GB` : `${Math.round(bytes / 1e6)} MB`;
}

export function statusPath(id) {
  return "/models/status/" + id.split("/").map(encodeURIComponent).join("/");
}

export class ModelPicker {
  constructor(api, { select, state, loadButton }, { preferred, onChange, onFailure }) {
    this.api = api;
    this.select = select;
    this.state = state;
    this.loadButton = loadButton;
    this.preferred = preferred;
    this.onChange = onChange;
    this.onFailure = onFailure;
    this.entries = [];
    this.watching = null;
    select.addEventListener("change", () => {
      this.preferred = select.value;
      this.onChange(select.value);
      this.show();
    });
    loadButton.addEventListener("click", () => this.load(select.value));
  }

  get selected() {
    return this.select.value;
  }

  entry(id) {
    return this.entries.find((entry) => entry.id === id) ?? null;
  }

  async refresh() {
    let served, registry, health;
    try {
      [served, registry, health] = await Promise.all([
        this.api.json("/v1/models"),
        this.api.json("/models/available"),
        this.api.json("/health"),
      ]);
    } catch (error) {
      this.onFailure(error);
      return false;
    }
    // /v1/models lists every model it can serve; `state` says which are loaded now.
    const resident = new Set(
      served.data.filter((model) => (model.state ?? "loaded") === "loaded").map((model) => model.id),
    );
    const load = health.model_status === "loading" ? await this.loadInProgress() : null;
    // Embedding and reranker models do not chat: the picker offers chat models only.
    const chat = registry.models.filter((model) => model.kind === "chat");
    const entries = chat.map((model) => ({
      id: model.id,
      name: model.name,
      size: model.size_bytes,
      state: resident.has(model.id)
        ? "resident"
        : load?.model_id === model.id
          ? load.status
          : model.is_local
            ? "local"
            : "remote",
      done: load?.model_id === model.id ? load.downloaded_bytes : null,
      total: load?.model_id === model.id ? load.total_bytes : null,
    }));
    // A hub file loaded by id is resident without being in the registry.
    const inRegistry = new Set(registry.models.map((model) => model.id));
    for (const id of resident) {
      if (!inRegistry.has(id)) entries.unshift({ id, name: id, state: "resident" });
    }
    this.entries = entries;
    this.fill(registry.default_model);
    if (load && (load.status === "downloading" || load.status === "loading")) this.watch(load.model_id);
    return true;
  }

  async loadInProgress() {
    try {
      const info = await this.api.json("/system/info");
      const id = info.model.loading;
      return id ? await this.api.json(statusPath(id)) : null;
    } catch {
      return null; // the picker still lists the models, without the progress
    }
  }

  fill(defaultModel) {
    const firstResident = this.entries.find((entry) => entry.state === "resident")?.id;
    const wanted = [this.preferred, firstResident, defaultModel].find((id) => id && this.entry(id));
    this.select.replaceChildren(
      ...this.entries.map((entry) => {
        const option = document.createElement("option");
        option.value = entry.id;
        option.dataset.state = entry.state;
        option.textContent = `${entry.name} · ${LABELS[entry.state](entry)}`;
        return option;
      }),
    );
    if (wanted) this.select.value = wanted;
    this.show();
  }

  show() {
    const entry = this.entry(this.select.value);
    this.state.textContent = entry ? LABELS[entry.state](entry) : "";
    this.state.dataset.state = entry?.state ?? "";
    const loadable = entry && (entry.state === "local" || entry.state === "remote");
    this.loadButton.hidden = !loadable;
    this.loadButton.disabled = this.watching !== null;
    this.loadButton.textContent = entry?.state === "remote" ? "Download and load" : "Load";
    this.loadButton.title = "The server then serves this model in place of the one it serves now";
  }

  async load(id) {
    this.loadButton.disabled = true;
    try {
      await this.api.json("/models/load?wait=false", { method: "POST", body: { model_id: id } });
    } catch (error) {
      this.onFailure(error);
      this.loadButton.disabled = false;
      return;
    }
    this.watch(id);
  }

  async watch(id) {
    if (this.watching === id) return;
    this.watching = id;
    this.show();
    try {
      for (;;) {
        const status = await this.api.json(statusPath(id));
        const entry = this.entry(id);
        if (entry && (status.status === "downloading" || status.status === "loading")) {
          Object.assign(entry, {
            state: status.status,
            done: status.downloaded_bytes,
            total: status.total_bytes,
          });
          this.relabel(entry);
        }
        if (status.status === "failed") {
          this.onFailure(new Error(`The model ${id} did not load: ${status.error ?? "see the server's log"}`));
          break;
        }
        if (status.status !== "downloading" && status.status !== "loading") break;
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      }
    } catch (error) {
      this.onFailure(error);
    } finally {
      this.watching = null;
    }
    await this.refresh();
  }

  relabel(entry) {
    const option = [...this.select.options].find((candidate) => candidate.value === entry.id);
    if (option) {
      option.dataset.state = entry.state;
      option.textContent = `${entry.name} · ${LABELS[entry.state](entry)}`;
    }
    this.show();
  }
}
