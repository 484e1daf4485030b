// The page: mode tabs, the API key, the model description, and page-wide error reporting.

import { apiJson, clearError, report, setApiKey, showError } from "./api.js";
import { initLive } from "./live.js";
import { initVideo, setClassNames } from "./video.js";

const $ = (id) => document.getElementById(id);

async function loadModel() {
  const info = $("model-info");
  const warning = $("model-warning");
  try {
    const { models } = await apiJson("/v1/models");
    const model = models[0];
    info.textContent = `Model ${model.name} (${model.backbone}, ${model.num_classes} classes) on ${model.device}.`;
    info.dataset.model = model.name;
    info.dataset.randomWeights = String(model.random_weights);
    setClassNames(new Map(model.classes.map((c) => [c.category_id, c.name])));
    warning.hidden = !model.warnings.length;
    warning.textContent = model.warnings.join(" ");
    return true;
  } catch (err) {
    info.textContent = "The model description is not available.";
    report(err);
    return false;
  }
}

function initTabs() {
  const tabs = [$("tab-video"), $("tab-live")];
  const select = (tab, focus) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !on;
    }
    if (focus) tab.focus();
    document.body.dataset.mode = tab.id.replace("tab-", "");
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => select(tab, false));
    tab.addEventListener("keydown", (ev) => {
      if (ev.key === "ArrowRight" || ev.key === "ArrowLeft") {
        ev.preventDefault();
        const step = ev.key === "ArrowRight" ? 1 : tabs.length - 1;
        select(tabs[(i + step) % tabs.length], true);
      }
    });
  });
  select(location.hash === "#live" ? tabs[1] : tabs[0], false);
}

function init() {
  initTabs();
  initVideo();
  initLive();
  $("key-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    setApiKey($("api-key").value);
    clearError();
    if (await loadModel()) $("model-info").dataset.keyAccepted = "true";
  });
  $("error-dismiss").addEventListener("click", clearError);
  window.addEventListener("error", (ev) => showError(ev.message || "a page script failed", "page_error"));
  window.addEventListener("unhandledrejection", (ev) => report(ev.reason));
  loadModel().finally(() => {
    document.body.dataset.ready = "true";
  });
}

init();
