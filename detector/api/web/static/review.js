// Vigil review page: list, inspect and review outliers through the daemon's review API.
//
// Record values (fields, keys, categories, notes) are untrusted: they only ever reach the page
// through textContent, Text nodes or setAttribute of fixed, harmless attribute names. No HTML
// string is parsed anywhere in this file, and nothing is evaluated.
(function () {
  "use strict";

  const SVG_NS = "http://www.w3.org/2000/svg";
  const TOKEN_KEY = "vigil.token";
  const REVIEWER_KEY = "vigil.reviewer";
  const FIELD_ROWS = 100;   // fields of a record shown at first, and added by each "Show more"
  const VERB = { confirmed: "Confirm", dismissed: "Dismiss", unreviewed: "Undo verdict" };

  const state = {
    filters: filtersFromAddress(),
    sort: "ts",
    order: "desc",
    limit: 50,
    offset: 0,
    rows: [],
    total: 0,
    selectedId: null,
    checked: new Set(),
    readsNeedToken: false,
    retry: null,          // a read to run again once a token has been entered
    pendingWrite: null,   // a verdict refused for want of a token: never sent again by itself, only named
    fieldsShown: 0,       // rows of the detail's field table shown (long records are cut, see FIELD_ROWS)
    listSeq: 0,
    detailSeq: 0,
    status: null,         // the last /v1/status answer (detectors and their last training)
    busy: false,
  };

  function defaultFilters() {
    return { detector: "", review_state: "unreviewed", min_ratio: "", key: "", since: "", until: "" };
  }

  /** The default filters, with those the page's address names (`/review?detector=web&review_state=unreviewed`:
   * the link an alert's `review` annotation carries). */
  function filtersFromAddress() {
    const filters = defaultFilters();
    const given = new URLSearchParams(window.location.search);
    for (const name of ["detector", "review_state", "min_ratio", "key"]) {
      if (given.has(name)) filters[name] = given.get(name);
    }
    if (!["", "unreviewed", "confirmed", "dismissed"].includes(filters.review_state)) {
      filters.review_state = "unreviewed";
    }
    return filters;
  }

  const $ = (id) => document.getElementById(id);

  // --- safe DOM construction ------------------------------------------------------------------

  /** An HTML element; children are nodes or strings (appended as Text nodes, never parsed). */
  function el(tag, opts, ...children) {
    const node = document.createElement(tag);
    if (opts) {
      if (opts.cls) node.className = opts.cls;
      if (opts.text !== undefined) node.textContent = opts.text;
      if (opts.title !== undefined) node.title = opts.title;
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  /** An SVG element; attribute names are constants of this file, values numbers or constants. */
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svgTitle(text) {
    return svg("title", {}, text);
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // --- formatting -------------------------------------------------------------------------------

  function fmtNum(x) {
    if (typeof x !== "number" || !Number.isFinite(x)) return String(x);
    const a = Math.abs(x);
    if (a !== 0 && (a >= 1e7 || a < 1e-3)) return x.toExponential(2);
    return String(Number(x.toPrecision(4)));
  }

  function fmtRatio(r) {
    if (typeof r !== "number" || !Number.isFinite(r)) return "—";
    return "×" + (r >= 100 ? r.toFixed(0) : String(Number(r.toPrecision(3))));
  }

  function fmtVal(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "number") return fmtNum(v);
    if (typeof v === "string") return v;
    if (typeof v === "boolean") return v ? "true" : "false";
    return JSON.stringify(v);
  }

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return d.toISOString().slice(0, 19).replace("T", " ");
  }

  function pct(share) {
    return typeof share === "number" && Number.isFinite(share) ? (share * 100).toFixed(share < 0.1 ? 1 : 0) + " %" : "—";
  }

  function truncate(s, n) {
    return s.length > n ? s.slice(0, n - 1) + "…" : s;
  }

  // --- token and messages -----------------------------------------------------------------------

  function storageGet(store, key) {
    try { return store.getItem(key) || ""; } catch (e) { return ""; }
  }

  function storageSet(store, key, value) {
    try {
      if (value) store.setItem(key, value); else store.removeItem(key);
    } catch (e) { /* storage disabled: the value lives until the page is left */ }
  }

  let memoryToken = "";
  function getToken() { return storageGet(window.sessionStorage, TOKEN_KEY) || memoryToken; }
  function setToken(token) {
    memoryToken = token;
    storageSet(window.sessionStorage, TOKEN_KEY, token);
    renderTokenState();
  }

  function renderTokenState() {
    const has = Boolean(getToken());
    $("token-state").textContent = has ? "Token: set (this tab)" : "Token: not set";
    $("token-state").classList.toggle("set", has);
    $("login-open").textContent = has ? "Change token" : "Log in";
    $("logout").hidden = !has;
  }

  function showMessage(text, kind) {
    const box = $("message");
    box.textContent = text;
    box.className = "message " + (kind || "info");
    box.hidden = false;
  }

  function hideMessage() {
    $("message").hidden = true;
  }

  /**
   * Open the token form with why it is needed (the form's hint says where the token is). `retry` is a read
   * to run again with the new token; `pending` a write that was not stored: it is named after the token is
   * saved, never sent by itself (the page may have moved on since, and a verdict must be meant).
   */
  function askLogin(reason, retry, pending) {
    state.retry = retry || null;
    state.pendingWrite = pending || null;
    hideMessage();                               // the form says it: one message, not two
    $("login-reason").textContent = reason;
    $("login").hidden = false;
    $("token-input").value = "";
    $("reviewer-input").value = storageGet(window.localStorage, REVIEWER_KEY);
    $("token-input").focus();
  }

  function closeLogin() {
    $("login").hidden = true;
    state.retry = null;
    const pending = state.pendingWrite;
    state.pendingWrite = null;
    if (pending) showMessage(notStored(pending) + ".", "info");
  }

  function notStored(pending) {
    return pending.ids.length === 1
      ? "Nothing was stored for outlier #" + pending.ids[0]
      : "Nothing was stored for the " + pending.ids.length + " selected outliers";
  }

  /** After a token is saved: say the refused verdict was not stored, and show the outlier it was for. */
  function askAgain(pending) {
    if (pending.single) {
      const id = pending.ids[0];
      const index = state.rows.findIndex((o) => o.id === id);
      if (index >= 0 && state.selectedId !== id) selectRow(index);
      showMessage("Token saved. " + notStored(pending) + ": press " + VERB[pending.verdict] +
        " again if you still mean it.", "info");
    } else {
      showMessage("Token saved. " + notStored(pending) + ": press " + VERB[pending.verdict] +
        " selected again if you still mean it.", "info");
    }
  }

  // --- the API ----------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function describeError(data, resp) {
    if (data && typeof data.error === "string") return data.error;
    if (data && typeof data.detail === "string") return data.detail;
    if (data && Array.isArray(data.detail)) {
      return data.detail.map((d) => (d && d.msg ? String(d.msg) : JSON.stringify(d))).join("; ");
    }
    return resp.status + " " + resp.statusText;
  }

  /** One request to the daemon; writes carry the token, reads only once the server asked for it. */
  async function api(method, path, body) {
    const write = method !== "GET";
    const token = getToken();
    const headers = { Accept: "application/json" };
    if (token && (write || state.readsNeedToken)) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(path, {
        method, headers, cache: "no-store", credentials: "same-origin",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, "Cannot reach the daemon (" + e.message + ").");
    }
    if (resp.status === 401 && !write && !state.readsNeedToken) {
      state.readsNeedToken = true;               // reads are protected on this daemon
      if (token) return api(method, path, body); // retry at once with the token we have
    }
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) throw new ApiError(resp.status, describeError(data, resp));
    return data;
  }

  /** Report a failed request; a 401 asks for the token (in the form only), remembering a read to retry or
   *  a write that was not stored. */
  function failed(err, what, retry, pending) {
    if (err.status === 401) {
      const had = Boolean(getToken());
      if (had) setToken("");
      const lost = pending ? " " + notStored(pending) + "." : "";
      const reason = had
        ? "The daemon refused the token (401: " + err.message + ") while " + what + "." + lost + " Enter it again."
        : "The daemon needs the API token (401) for " + what + "." + lost;
      askLogin(reason, retry, pending);
      return;
    }
    showMessage("Failed " + what + ": " + err.message, "error");
  }

  // --- filters, list, paging --------------------------------------------------------------------

  function utcParam(local) {
    // datetime-local gives "YYYY-MM-DDTHH:MM[:SS]"; the page treats it as UTC
    if (!local) return "";
    return (local.length === 16 ? local + ":00" : local) + "Z";
  }

  function filterParams() {
    const f = state.filters;
    const params = new URLSearchParams();
    if (f.detector) params.set("detector", f.detector);
    if (f.review_state) params.set("review_state", f.review_state);
    if (f.min_ratio !== "") params.set("min_ratio", f.min_ratio);
    if (f.key) params.set("key", f.key);
    if (f.since) params.set("since", utcParam(f.since));
    if (f.until) params.set("until", utcParam(f.until));
    return params;
  }

  function readFilters() {
    state.filters = {
      detector: $("f-detector").value,
      review_state: $("f-state").value,
      min_ratio: $("f-min-ratio").value.trim(),
      key: $("f-key").value,
      since: $("f-since").value,
      until: $("f-until").value,
    };
  }

  function writeFilters() {
    const f = state.filters;
    $("f-detector").value = f.detector;
    $("f-state").value = f.review_state;
    $("f-min-ratio").value = f.min_ratio;
    $("f-key").value = f.key;
    $("f-since").value = f.since;
    $("f-until").value = f.until;
  }

  function updateCsvLink() {
    const params = filterParams();
    const query = params.toString();
    $("csv-link").setAttribute("href", "/v1/outliers.csv" + (query ? "?" + query : ""));
  }

  async function loadStatus() {
    try {
      state.status = await api("GET", "/v1/status");
    } catch (err) {
      failed(err, "reading the daemon status", reloadAll);
      return;
    }
    const select = $("f-detector");
    const current = state.filters.detector;
    while (select.options.length > 1) select.remove(1);
    const names = Object.keys((state.status && state.status.detectors) || {}).sort();
    for (const name of names) {
      const option = el("option", { text: name });
      option.value = name;
      select.append(option);
    }
    select.value = names.includes(current) ? current : "";
  }

  async function loadList(then) {
    const seq = ++state.listSeq;
    updateCsvLink();
    const params = filterParams();
    params.set("sort", state.sort);
    params.set("order", state.order);
    params.set("limit", String(state.limit));
    params.set("offset", String(state.offset));
    let data;
    try {
      data = await api("GET", "/v1/outliers?" + params.toString());
    } catch (err) {
      if (seq !== state.listSeq) return;
      failed(err, "loading outliers", reloadAll);
      return;
    }
    if (seq !== state.listSeq) return;
    if (data.outliers.length === 0 && data.total > 0 && state.offset > 0) {
      // the page emptied (e.g. all its rows were reviewed away): go back to the last page
      state.offset = Math.max(0, Math.floor((data.total - 1) / state.limit) * state.limit);
      await loadList(then);
      return;
    }
    state.rows = data.outliers;
    state.total = data.total;
    const onPage = new Set(state.rows.map((o) => o.id));
    for (const id of [...state.checked]) if (!onPage.has(id)) state.checked.delete(id);
    if (state.selectedId !== null && !onPage.has(state.selectedId)) clearDetail();
    renderRows();
    renderPager();
    if (then) then();
  }

  async function reloadAll() {
    await loadStatus();
    await loadList();
  }

  function applyFilters() {
    readFilters();
    state.offset = 0;
    loadList();
  }

  function renderPager() {
    const first = state.rows.length ? state.offset + 1 : 0;
    const last = state.offset + state.rows.length;
    $("page-info").textContent = state.total
      ? first + "–" + last + " of " + state.total
      : "0 of 0";
    $("page-prev").disabled = state.offset === 0;
    $("page-next").disabled = last >= state.total;
    for (const th of document.querySelectorAll("th.sortable")) {
      const active = th.dataset.sort === state.sort;
      th.classList.toggle("sorted-asc", active && state.order === "asc");
      th.classList.toggle("sorted-desc", active && state.order === "desc");
      th.setAttribute("aria-sort", active ? (state.order === "asc" ? "ascending" : "descending") : "none");
    }
  }

  function oodEntries(o) {
    const ood = o.ood || {};
    return [...(ood.unseen_category || []), ...(ood.rare_category || []), ...(ood.out_of_range || [])];
  }

  function stateBadge(reviewState) {
    return el("span", { cls: "state state-" + (reviewState || "unreviewed"), text: reviewState || "unreviewed" });
  }

  function topFeature(o) {
    const c = (o.contributions || [])[0];
    if (!c) return el("span", { cls: "muted", text: "—" });
    const full = c.feature + ": " + fmtVal(c.actual) + " vs " + fmtVal(c.expected) + " (" + pct(c.share) + " of the score)";
    return el("span", { cls: "top-feature", title: full },
      el("span", { cls: "feature-name", text: c.feature }),
      el("span", { cls: "feature-values" },
        el("span", { cls: "actual", text: fmtVal(c.actual) }),
        el("span", { cls: "muted", text: " vs " }),
        el("span", { cls: "expected", text: fmtVal(c.expected) })));
  }

  function timeCell(iso) {
    const text = fmtTime(iso);
    const [date, clock] = text.includes(" ") ? text.split(" ") : ["", text];
    return el("td", { cls: "time", title: text + " UTC" },
      el("span", { cls: "date", text: date }), el("span", { cls: "clock", text: clock }));
  }

  function buildRow(o, index) {
    const tr = el("tr", { cls: "row state-row-" + o.review_state });
    tr.dataset.id = String(o.id);
    tr.dataset.index = String(index);
    if (o.id === state.selectedId) tr.classList.add("selected");
    const box = el("input", { cls: "row-check" });
    box.type = "checkbox";
    box.checked = state.checked.has(o.id);
    box.setAttribute("aria-label", "select outlier " + o.id);
    const ratio = el("td", { cls: "num ratio", text: fmtRatio(o.ratio),
      title: "score " + fmtNum(o.score) + " / threshold " + fmtNum(o.threshold) });
    if (typeof o.ratio === "number" && o.ratio >= 10) ratio.classList.add("hot");
    const ood = oodEntries(o);
    const oodCell = el("td", { cls: "ood-cell" });
    if (o.ood && ood.length) {
      oodCell.append(el("span", { cls: "badge ood", text: "OOD",
        title: "out of distribution: " + ood.join(", ") }));
    }
    tr.append(
      el("td", { cls: "col-check" }, box),
      timeCell(o.ts),
      el("td", { text: o.detector }),
      el("td", { cls: "key", text: o.key === null || o.key === undefined ? "—" : o.key }),
      el("td", { cls: "num", text: fmtNum(o.score) }),
      ratio,
      el("td", {}, topFeature(o)),
      el("td", { cls: "review-cell" }, stateBadge(o.review_state)),
      oodCell,
    );
    return tr;
  }

  function renderRows() {
    const body = $("outlier-rows");
    clear(body);
    state.rows.forEach((o, i) => body.append(buildRow(o, i)));
    $("empty").hidden = state.rows.length > 0;
    renderChecked();
  }

  function replaceRow(index) {
    const old = $("outlier-rows").querySelector('tr[data-index="' + index + '"]');
    if (old) old.replaceWith(buildRow(state.rows[index], index));
  }

  function renderChecked() {
    const n = state.checked.size;
    $("bulk-count").textContent = n + " selected";
    $("bulk-confirm").disabled = n === 0;
    $("bulk-dismiss").disabled = n === 0;
    const all = $("check-all");
    all.checked = state.rows.length > 0 && state.rows.every((o) => state.checked.has(o.id));
    all.indeterminate = n > 0 && !all.checked;
  }

  function selectedIndex() {
    return state.rows.findIndex((o) => o.id === state.selectedId);
  }

  function selectRow(index) {
    if (index < 0 || index >= state.rows.length) return;
    const o = state.rows[index];
    state.selectedId = o.id;
    for (const tr of $("outlier-rows").querySelectorAll("tr.selected")) tr.classList.remove("selected");
    const tr = $("outlier-rows").querySelector('tr[data-index="' + index + '"]');
    if (tr) {
      tr.classList.add("selected");
      tr.scrollIntoView({ block: "nearest" });
    }
    loadDetail(o.id);
  }

  function move(step) {
    const current = selectedIndex();
    if (current === -1) {
      selectRow(step > 0 ? 0 : state.rows.length - 1);
      return;
    }
    const next = current + step;
    if (next >= 0 && next < state.rows.length) {
      selectRow(next);
    } else if (next >= state.rows.length && state.offset + state.rows.length < state.total) {
      state.offset += state.limit;
      loadList(() => selectRow(0));
    } else if (next < 0 && state.offset > 0) {
      state.offset = Math.max(0, state.offset - state.limit);
      loadList(() => selectRow(state.rows.length - 1));
    }
  }

  // --- the detail panel -------------------------------------------------------------------------

  /** Empty the detail panel: its outlier is no longer in the list (filters, paging). */
  function clearDetail() {
    state.selectedId = null;
    state.detailSeq++;                           // a detail still loading is not shown
    $("detail").classList.remove("loading");
    $("detail-body").hidden = true;
    delete $("detail-body").dataset.id;
    $("detail-empty").hidden = false;
  }

  async function loadDetail(id) {
    const seq = ++state.detailSeq;
    $("detail").classList.add("loading");
    let o;
    try {
      o = await api("GET", "/v1/outliers/" + encodeURIComponent(String(id)));
    } catch (err) {
      if (seq === state.detailSeq) {
        $("detail").classList.remove("loading");
        failed(err, "loading outlier " + id, () => loadDetail(id));
      }
      return;
    }
    if (seq !== state.detailSeq) return;
    $("detail").classList.remove("loading");
    renderDetail(o);
  }

  function warnings(o) {
    const items = [];
    const ood = o.ood || {};
    const fields = o.fields || {};
    for (const f of ood.unseen_category || []) {
      items.push(["ood", "The model never saw " + f + "=" + fmtVal(fields[f]) +
        ": that value was not in its training window, so its reconstruction means little."]);
    }
    for (const f of ood.rare_category || []) {
      items.push(["ood", "The model saw " + f + "=" + fmtVal(fields[f]) +
        " in under 0.1 % of its training records: it knows little about that value."]);
    }
    if (ood.new_key) {
      items.push(["ood", "The model has not learned this key's own normal yet (a new key): it is judged " +
        "against every key's records until the next training."]);
    }
    for (const f of ood.out_of_range || []) {
      items.push(["ood", f + "=" + fmtVal(fields[f]) +
        " is far outside the range the model was trained on (out of range)."]);
    }
    const m = o.model || {};
    if (m.diversity && m.diversity !== "ok") {
      const problems = [];
      const det = state.status && state.status.detectors && state.status.detectors[o.detector];
      const last = det && det.last_training;
      if (last && last.model_version === m.version && last.diversity && Array.isArray(last.diversity.problems)) {
        for (const p of last.diversity.problems) problems.push(String(p.message || p.check));
      }
      items.push(["diversity", "Model diversity status " + m.diversity + " (not ok): model v" + m.version +
        " was trained on a window that failed the training-data diversity checks; scores may mislead.", problems]);
    }
    if (m.status && m.status !== "active") {
      items.push(["info", "Scored by model v" + m.version + ", which is no longer active (" + m.status + ")."]);
    }
    return items;
  }

  function renderDetail(o) {
    $("detail-empty").hidden = true;
    $("detail-body").hidden = false;
    $("detail-body").dataset.id = String(o.id);
    $("d-title").textContent = "Outlier #" + o.id;
    $("d-state").replaceWith(Object.assign(stateBadge(o.review_state), { id: "d-state" }));

    const summary = $("d-summary");
    clear(summary);
    summary.append(
      el("strong", { text: o.detector }), " · key ",
      el("span", { cls: "key", text: o.key === null || o.key === undefined ? "—" : o.key }),
      " · " + fmtTime(o.ts) + " UTC · score " + fmtNum(o.score) + " / threshold " + fmtNum(o.threshold) + " = ",
      el("strong", { cls: "ratio", text: fmtRatio(o.ratio) }),
    );

    const list = $("d-warnings");
    clear(list);
    for (const [kind, text, sub] of warnings(o)) {
      const li = el("li", { cls: "warning " + kind, text });
      if (sub && sub.length) li.append(el("ul", {}, ...sub.map((s) => el("li", { text: s }))));
      list.append(li);
    }
    list.hidden = list.childElementCount === 0;

    const review = o.review || {};
    $("d-note").value = review.note || "";
    const info = $("d-review");
    clear(info);
    $("d-unreview").hidden = !review.state || review.state === "unreviewed";
    if (review.state && review.state !== "unreviewed") {
      info.append(el("span", { text: review.state === "confirmed" ? "Confirmed" : "Dismissed" }),
        review.reviewer ? el("span", { text: " by " + review.reviewer }) : null,
        review.reviewed_at ? el("span", { text: " at " + fmtTime(review.reviewed_at) + " UTC" }) : null,
        review.note ? el("span", { text: ": " }) : null,
        review.note ? el("q", { cls: "note", text: review.note }) : null);
    } else {
      info.textContent = "Not reviewed yet.";
    }

    const features = $("d-features");
    clear(features);
    features.append(featureChart(o));

    const history = $("d-history");
    clear(history);
    history.append(historyChart(o.history || [], o.threshold, o.record_id));

    renderFields(o);
    renderModel(o.model || {});
  }

  /** The record's fields (explained features first); a long record shows FIELD_ROWS of them and how many
   *  more there are, with a button for the next FIELD_ROWS. */
  function renderFields(o, shown) {
    const body = $("d-fields").tBodies[0];
    clear(body);
    const fields = o.fields || {};
    const expected = o.expected || {};
    const shares = new Map((o.contributions || []).map((c) => [c.feature, c.share]));
    const oodSet = new Set(oodEntries(o));
    const seen = new Set();
    const names = [];
    const add = (name) => { if (!seen.has(name)) { seen.add(name); names.push(name); } };
    for (const c of o.contributions || []) add(c.feature);
    for (const name of Object.keys(fields)) add(name);
    for (const name of Object.keys(expected)) add(name);
    state.fieldsShown = Math.min(names.length, shown || FIELD_ROWS);
    for (const name of names.slice(0, state.fieldsShown)) {
      const nameCell = el("td", { cls: "field-name", text: name });
      if (oodSet.has(name)) nameCell.append(" ", el("span", { cls: "badge ood", text: "OOD" }));
      const isFeature = Object.prototype.hasOwnProperty.call(expected, name);
      const tr = el("tr", { cls: isFeature ? "feature" : "extra" },
        nameCell,
        el("td", { cls: "value", text: Object.prototype.hasOwnProperty.call(fields, name) ? fmtVal(fields[name]) : "—" }),
        el("td", { cls: "value expected", text: isFeature ? fmtVal(expected[name]) : "" }),
        el("td", { cls: "num", text: shares.has(name) ? pct(shares.get(name)) : "" }));
      body.append(tr);
    }
    const more = names.length - state.fieldsShown;
    if (more > 0) {
      const button = el("button", { cls: "show-more", text: "Show " + Math.min(more, FIELD_ROWS) + " more" });
      button.type = "button";
      button.addEventListener("click", () => renderFields(o, state.fieldsShown + FIELD_ROWS));
      const cell = el("td", { cls: "more-fields" },
        el("span", { text: more.toLocaleString("en-US") + " more fields (" + state.fieldsShown + " of " +
          names.length.toLocaleString("en-US") + " shown) " }), button);
      cell.colSpan = 4;
      body.append(el("tr", { cls: "more" }, cell));
    }
  }

  function renderModel(m) {
    const dl = $("d-model");
    clear(dl);
    const window_ = (m.window_start || m.window_end)
      ? fmtTime(m.window_start) + " – " + fmtTime(m.window_end) + " UTC" +
        (m.window_records !== null && m.window_records !== undefined ? " (" + m.window_records + " records)" : "")
      : "—";
    const rows = [
      ["Version", "v" + fmtVal(m.version) + (m.status ? " (" + m.status + ")" : "")],
      ["Trained at", m.trained_at ? fmtTime(m.trained_at) + " UTC" : "—"],
      ["Training window", window_],
      ["Threshold", fmtNum(m.threshold) + (m.threshold_method ? " (" + m.threshold_method + ")" : "")],
      ["Threshold method", m.threshold_method || "—"],
      ["Training-data diversity", m.diversity || "—"],
    ];
    for (const [term, value] of rows) {
      const dd = el("dd", { text: value });
      if (term === "Training-data diversity" && m.diversity && m.diversity !== "ok") dd.className = "bad";
      dl.append(el("dt", { text: term }), dd);
    }
  }

  // --- charts (inline SVG built with createElementNS) -------------------------------------------

  function featureChart(o) {
    const contribs = (o.contributions || []).slice().sort((a, b) => (b.share || 0) - (a.share || 0));
    if (!contribs.length) return el("p", { cls: "muted", text: "No per-feature contributions stored." });
    const oodSet = new Set(oodEntries(o));
    const W = 600, top = 24, rowH = 40;
    const labelX = 0, barX = 130, barW = 210, valueX = 348, shareX = 452, shareW = 100;
    const H = top + rowH * contribs.length + 4;
    const root = svg("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, class: "feature-chart",
      role: "img", "aria-label": "actual against expected value of each feature, and its share of the score" });
    root.append(
      svg("rect", { x: barX, y: 6, width: 10, height: 10, class: "swatch actual" }),
      svg("text", { x: barX + 14, y: 15, class: "legend" }, "actual"),
      svg("rect", { x: barX + 70, y: 6, width: 10, height: 10, class: "swatch expected" }),
      svg("text", { x: barX + 84, y: 15, class: "legend" }, "expected"),
      svg("rect", { x: shareX, y: 6, width: 10, height: 10, class: "swatch share" }),
      svg("text", { x: shareX + 14, y: 15, class: "legend" }, "share of score"),
    );
    contribs.forEach((c, i) => {
      const y = top + i * rowH;
      const g = svg("g", { class: "feature-row" + (oodSet.has(c.feature) ? " ood" : "") });
      g.append(svgTitle(c.feature + ": actual " + fmtVal(c.actual) + ", expected " + fmtVal(c.expected) +
        ", " + pct(c.share) + " of the score"));
      if (i % 2 === 0) g.append(svg("rect", { x: 0, y: y, width: W, height: rowH, class: "stripe" }));
      g.append(svg("text", { x: labelX + 4, y: y + rowH / 2 + 4, class: "feature-label" },
        truncate(String(c.feature), 18)));
      const a = c.actual, e = c.expected;
      if (typeof a === "number" && typeof e === "number" && Number.isFinite(a) && Number.isFinite(e)) {
        const m = Math.max(Math.abs(a), Math.abs(e)) || 1;
        const negative = a < 0 || e < 0;
        const zero = negative ? barX + barW / 2 : barX;
        const scale = (negative ? barW / 2 : barW) / m;
        const bar = (v, yy, cls) => svg("rect", {
          x: (v >= 0 ? zero : zero + v * scale).toFixed(1), y: yy,
          width: Math.max(Math.abs(v) * scale, 1).toFixed(1), height: 12, class: "bar " + cls });
        g.append(
          bar(a, y + 6, "actual"), bar(e, y + 22, "expected"),
          svg("line", { x1: zero, x2: zero, y1: y + 4, y2: y + 36, class: "axis" }),
          svg("text", { x: valueX, y: y + 16, class: "value actual" }, truncate(fmtVal(a), 14)),
          svg("text", { x: valueX, y: y + 32, class: "value expected" }, truncate(fmtVal(e), 14)),
        );
      } else {
        const mismatch = fmtVal(a) !== fmtVal(e) ? " mismatch" : "";
        g.append(
          svg("text", { x: barX, y: y + 16, class: "category actual" + mismatch }, "actual: " + truncate(fmtVal(a), 36)),
          svg("text", { x: barX, y: y + 32, class: "category expected" }, "expected: " + truncate(fmtVal(e), 34)),
        );
      }
      const share = typeof c.share === "number" && Number.isFinite(c.share) ? Math.max(0, Math.min(1, c.share)) : 0;
      g.append(
        svg("rect", { x: shareX, y: y + 13, width: shareW, height: 12, class: "share-track" }),
        svg("rect", { x: shareX, y: y + 13, width: Math.max(share * shareW, 0.5).toFixed(1), height: 12,
          class: "bar share" }),
        svg("text", { x: W - 2, y: y + 23, class: "value share", "text-anchor": "end" }, pct(c.share)),
      );
      root.append(g);
    });
    return root;
  }

  function historyChart(history, threshold, currentRecordId) {
    const pts = history
      .filter((h) => typeof h.score === "number" && Number.isFinite(h.score))
      .map((h) => ({ t: Date.parse(h.ts), ts: h.ts, s: h.score, out: Boolean(h.is_outlier),
        cur: h.record_id === currentRecordId }));
    if (!pts.length) return el("p", { cls: "muted", text: "No scored records of this key around it." });
    const W = 600, H = 200, L = 58, R = 12, T = 14, B = 30;
    const values = pts.map((p) => p.s);
    const hasThreshold = typeof threshold === "number" && Number.isFinite(threshold);
    if (hasThreshold) values.push(threshold);
    const lo = Math.min(...values), hi = Math.max(...values);
    const log = lo > 0 && hi / lo > 20;
    const f = (v) => (log ? Math.log10(v) : v);
    let flo = f(lo), fhi = f(hi);
    if (fhi === flo) { flo -= 1; fhi += 1; }
    const pad = (fhi - flo) * 0.06;
    flo -= pad; fhi += pad;
    const y = (v) => T + (H - T - B) * (1 - (f(v) - flo) / (fhi - flo));
    const times = pts.map((p) => p.t);
    const byTime = times.every(Number.isFinite) && Math.max(...times) > Math.min(...times);
    const t0 = Math.min(...times), t1 = Math.max(...times);
    const x = (p, i) => byTime
      ? L + (W - L - R) * (p.t - t0) / (t1 - t0)
      : L + (W - L - R) * (pts.length > 1 ? i / (pts.length - 1) : 0.5);

    const root = svg("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, class: "history-chart",
      role: "img", "aria-label": "scores of this key's records around the outlier, with the threshold" });
    root.append(
      svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }),
      svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
      svg("text", { x: L - 6, y: y(hi) + 4, "text-anchor": "end", class: "tick" }, fmtNum(hi)),
      svg("text", { x: L - 6, y: y(lo) + 4, "text-anchor": "end", class: "tick" }, fmtNum(lo)),
      svg("text", { x: 4, y: T - 2, class: "tick" }, log ? "score (log)" : "score"),
      svg("text", { x: L, y: H - 10, class: "tick" }, fmtTime(pts[0].ts)),
      svg("text", { x: W - R, y: H - 10, "text-anchor": "end", class: "tick" }, fmtTime(pts[pts.length - 1].ts)),
    );
    if (hasThreshold) {
      const ty = y(threshold).toFixed(1);
      root.append(
        svg("line", { x1: L, x2: W - R, y1: ty, y2: ty, class: "threshold" }),
        svg("text", { x: W - R, y: Number(ty) - 4, "text-anchor": "end", class: "threshold-label" },
          "threshold " + fmtNum(threshold)),
      );
    }
    root.append(svg("polyline", {
      points: pts.map((p, i) => x(p, i).toFixed(1) + "," + y(p.s).toFixed(1)).join(" "), class: "score-line" }));
    pts.forEach((p, i) => {
      const cls = p.cur ? "point current" : p.out ? "point flagged" : "point";
      const dot = svg("circle", { cx: x(p, i).toFixed(1), cy: y(p.s).toFixed(1), r: p.cur ? 6 : p.out ? 3.5 : 2,
        class: cls });
      dot.append(svgTitle(fmtTime(p.ts) + " UTC: score " + fmtNum(p.s) + (p.out ? " (flagged)" : "") +
        (p.cur ? " (this outlier)" : "")));
      root.append(dot);
    });
    return root;
  }

  // --- verdicts ----------------------------------------------------------------------------------

  function reviewer() {
    return storageGet(window.localStorage, REVIEWER_KEY).trim();
  }

  function verdictBody(verdict, note) {
    const body = { verdict };
    if (note && note.trim()) body.note = note.trim();
    const who = reviewer();
    if (who) body.reviewer = who;
    return body;
  }

  function markReviewed(ids, verdict) {
    const set = new Set(ids);
    state.rows.forEach((o, i) => {
      if (set.has(o.id)) {
        o.review_state = verdict;
        replaceRow(i);
      }
    });
  }

  function selectNextUnreviewed(from) {
    const n = state.rows.length;
    for (let step = 1; step <= n; step++) {
      const i = (from + step) % n;
      if (state.rows[i].review_state === "unreviewed") {
        selectRow(i);
        return;
      }
    }
    if (state.filters.review_state === "unreviewed" && state.total > n) {
      loadList(() => {                          // the reviewed rows fall out of this filter: refill the page
        const i = state.rows.findIndex((o) => o.review_state === "unreviewed");
        if (i >= 0) selectRow(i);
      });
      return;
    }
    showMessage("No unreviewed outliers left on this page.", "ok");
    if (state.selectedId !== null) loadDetail(state.selectedId);
  }

  async function reviewOne(verdict) {
    if (state.selectedId === null || state.busy) return;
    const id = state.selectedId;
    await sendVerdict(id, verdict, $("d-note").value);
  }

  async function sendVerdict(id, verdict, note) {
    const pending = { ids: [id], verdict, single: true };
    if (!getToken()) {
      askLogin("A verdict needs the API token. " + notStored(pending) + ".", null, pending);
      return;
    }
    state.busy = true;
    try {
      await api("POST", "/v1/outliers/" + encodeURIComponent(String(id)) + "/review", verdictBody(verdict, note));
    } catch (err) {
      failed(err, "storing the verdict on outlier " + id, null, pending);
      return;
    } finally {
      state.busy = false;
    }
    markReviewed([id], verdict);
    if (verdict === "unreviewed") {                // taken back: stay on it
      showMessage("Outlier #" + id + " is unreviewed again.", "ok");
      if (state.selectedId === id) loadDetail(id);
      return;
    }
    showMessage("Outlier #" + id + " " + verdict + ".", "ok");
    const index = state.rows.findIndex((o) => o.id === id);
    if (state.selectedId === id) selectNextUnreviewed(index === -1 ? -1 : index);
  }

  async function reviewChecked(verdict) {
    const ids = [...state.checked];
    if (!ids.length || state.busy) return;
    await sendBulk(ids, verdict, $("bulk-note").value);
  }

  async function sendBulk(ids, verdict, note) {
    const pending = { ids, verdict, single: false };
    if (!getToken()) {
      askLogin("Verdicts need the API token. " + notStored(pending) + ".", null, pending);
      return;
    }
    state.busy = true;
    let result;
    try {
      result = await api("POST", "/v1/outliers/review", { ids, ...verdictBody(verdict, note) });
    } catch (err) {
      failed(err, "storing verdicts on " + ids.length + " outliers", null, pending);
      return;
    } finally {
      state.busy = false;
    }
    const updated = result.updated || [];
    markReviewed(updated, verdict);
    for (const id of updated) state.checked.delete(id);
    renderChecked();
    $("bulk-note").value = "";
    const missing = (result.missing || []).length;
    showMessage(updated.length + " outliers " + verdict + "." + (missing ? " " + missing + " no longer exist." : ""),
      "ok");
    if (state.selectedId !== null && updated.includes(state.selectedId)) loadDetail(state.selectedId);
  }

  // --- events -----------------------------------------------------------------------------------

  function isTyping(target) {
    if (!target || !target.tagName) return false;
    const tag = target.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT" || target.isContentEditable) return true;
    if (tag === "INPUT") return !["checkbox", "radio", "button", "submit", "reset"].includes(target.type);
    return false;
  }

  function onKey(event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "Escape") {
      if (!$("login").hidden) closeLogin();
      if (isTyping(event.target)) event.target.blur();
      return;
    }
    if (isTyping(event.target)) return;
    switch (event.key) {
      case "j": move(1); break;
      case "k": move(-1); break;
      case "c": reviewOne("confirmed"); break;
      case "d": reviewOne("dismissed"); break;
      case "u": if (!$("d-unreview").hidden) reviewOne("unreviewed"); break;
      case "x": {
        const i = selectedIndex();
        if (i >= 0) toggleChecked(state.rows[i].id);
        break;
      }
      case "/": $("f-key").focus(); break;
      default: return;
    }
    event.preventDefault();
  }

  function toggleChecked(id, on) {
    const want = on === undefined ? !state.checked.has(id) : on;
    if (want) state.checked.add(id); else state.checked.delete(id);
    const box = $("outlier-rows").querySelector('tr[data-id="' + id + '"] input.row-check');
    if (box) box.checked = want;
    renderChecked();
  }

  function onRowClick(event) {
    const tr = event.target.closest("tr[data-index]");
    if (!tr) return;
    const index = Number(tr.dataset.index);
    if (event.target.classList.contains("row-check")) {
      toggleChecked(state.rows[index].id, event.target.checked);
      return;
    }
    selectRow(index);
  }

  function onSort(th) {
    const key = th.dataset.sort;
    if (state.sort === key) {
      state.order = state.order === "desc" ? "asc" : "desc";
    } else {
      state.sort = key;
      state.order = "desc";
    }
    state.offset = 0;
    loadList();
  }

  async function onCsvClick(event) {
    // a plain link unless reads need the token: then fetch with it and hand the file over as a blob
    if (!state.readsNeedToken || !getToken()) return;
    event.preventDefault();
    let resp;
    try {
      resp = await fetch($("csv-link").getAttribute("href"),
        { headers: { Authorization: "Bearer " + getToken() }, cache: "no-store" });
    } catch (e) {
      showMessage("Cannot reach the daemon (" + e.message + ").", "error");
      return;
    }
    if (!resp.ok) {
      failed(new ApiError(resp.status, resp.status + " " + resp.statusText), "exporting CSV", null);
      return;
    }
    const url = URL.createObjectURL(await resp.blob());
    const a = el("a");
    a.setAttribute("href", url);
    a.setAttribute("download", "outliers.csv");
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function bind() {
    $("filters").addEventListener("submit", (e) => { e.preventDefault(); applyFilters(); });
    $("f-detector").addEventListener("change", applyFilters);
    $("f-state").addEventListener("change", applyFilters);
    $("f-reset").addEventListener("click", () => {
      state.filters = defaultFilters();
      writeFilters();
      state.offset = 0;
      loadList();
    });
    $("page-prev").addEventListener("click", () => {
      state.offset = Math.max(0, state.offset - state.limit);
      loadList();
    });
    $("page-next").addEventListener("click", () => {
      if (state.offset + state.rows.length < state.total) {
        state.offset += state.limit;
        loadList();
      }
    });
    $("page-size").addEventListener("change", () => {
      state.limit = Number($("page-size").value) || 50;
      state.offset = 0;
      loadList();
    });
    for (const th of document.querySelectorAll("th.sortable")) {
      th.addEventListener("click", () => onSort(th));
      th.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); onSort(th); }
      });
    }
    $("outlier-rows").addEventListener("click", onRowClick);
    $("check-all").addEventListener("change", () => {
      const on = $("check-all").checked;
      for (const o of state.rows) toggleChecked(o.id, on);
    });
    $("bulk-confirm").addEventListener("click", () => reviewChecked("confirmed"));
    $("bulk-dismiss").addEventListener("click", () => reviewChecked("dismissed"));
    $("d-confirm").addEventListener("click", () => reviewOne("confirmed"));
    $("d-dismiss").addEventListener("click", () => reviewOne("dismissed"));
    $("d-unreview").addEventListener("click", () => reviewOne("unreviewed"));
    $("csv-link").addEventListener("click", onCsvClick);

    $("login-open").addEventListener("click", () => askLogin("Enter the API token.", null));
    $("logout").addEventListener("click", () => {
      setToken("");
      showMessage("Token forgotten for this tab.", "info");
    });
    $("login-cancel").addEventListener("click", closeLogin);
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const token = $("token-input").value.trim();
      if (!token) return;
      setToken(token);
      storageSet(window.localStorage, REVIEWER_KEY, $("reviewer-input").value.trim());
      const retry = state.retry;
      const pending = state.pendingWrite;
      state.pendingWrite = null;
      closeLogin();
      hideMessage();
      if (retry) retry();
      if (pending) askAgain(pending);
    });
    document.addEventListener("keydown", onKey);
  }

  async function init() {
    bind();
    writeFilters();
    renderTokenState();
    await reloadAll();
    document.body.dataset.state = "ready";   // the first load is over (whatever its outcome)
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
