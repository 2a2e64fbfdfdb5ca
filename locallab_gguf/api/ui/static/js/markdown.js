// Model output -> sanitized HTML. The model's text is untrusted: raw HTML in it is shown as
// text (marked's html tokens are escaped), and what marked makes of the rest passes through
// DOMPurify before it reaches the page, as Trusted Types require.
import { Marked } from "../vendor/marked.esm.js";
import DOMPurify from "../vendor/purify.es.mjs";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (character) => ESCAPES[character]);
}

const markdown = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    html({ text }) {
      return escapeHtml(text);
    },
  },
});

const SANITIZE = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe"],
  FORBID_ATTR: ["style"],
  RETURN_TRUSTED_TYPE: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  // A link in a reply opens apart from the chat, and tells the other site nothing.
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

export function renderMarkdown(element, text) {
  element.innerHTML = DOMPurify.sanitize(markdown.parse(text), SANITIZE);
  for (const pre of element.querySelectorAll("pre")) {
    addCopyButton(pre);
  }
}

function addCopyButton(pre) {
  const block = document.createElement("div");
  block.className = "code-block";
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.textContent = "Copy";
  button.setAttribute("aria-label", "Copy the code");
  button.addEventListener("click", () => copyText(pre.textContent, button));
  pre.replaceWith(block);
  block.append(button, pre);
}

async function copyText(text, button) {
  try {
    // The Clipboard API exists only in secure contexts (https, localhost); a page served on
    // a LAN address over http falls back to the older selection-based copy.
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
    } else {
      const scratch = document.createElement("textarea");
      scratch.value = text;
      scratch.className = "offscreen";
      document.body.append(scratch);
      scratch.select();
      document.execCommand("copy");
      scratch.remove();
    }
    flash(button, "Copied");
  } catch {
    flash(button, "Copy failed");
  }
}

function flash(button, label) {
  button.textContent = label;
  setTimeout(() => {
    button.textContent = "Copy";
  }, 1500);
}
