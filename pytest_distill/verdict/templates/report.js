(function () {
  "use strict";
  var blob = JSON.parse(document.getElementById("distill-cases").textContent);
  var details = null; // parsed on the first expand: prompts and replies can be megabytes
  var cases = blob.cases, roles = blob.roles, pageSize = blob.page;
  var changeLabels = Array.prototype.map.call(
    document.querySelectorAll("#f-change option"), function (o) { return o.textContent; }).slice(1);
  var state = { matches: [], page: 0, open: {}, printing: false };
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function filter() {
    var suite = $("f-suite").value, split = $("f-split").value, outcome = $("f-outcome").value;
    var change = $("f-change").value, text = $("f-text").value.trim().toLowerCase();
    var role = null, want = null;
    if (outcome) { role = outcome.split(":")[0]; want = Number(outcome.split(":")[1]); }
    state.matches = [];
    for (var n = 0; n < cases.length; n++) {
      var c = cases[n];
      if (suite !== "" && c.s !== Number(suite)) { continue; }
      if (split && c.p !== split) { continue; }
      if (role !== null && (!c.r[role] || c.r[role][0] !== want)) { continue; }
      if (change !== "" && c.c.indexOf(Number(change)) < 0) { continue; }
      if (text && c.t.indexOf(text) < 0) { continue; }
      state.matches.push(n);
    }
    state.page = 0;
    render();
  }

  function render() {
    var body = $("case-rows");
    body.textContent = "";
    var total = state.matches.length;
    var pages = Math.max(1, Math.ceil(total / pageSize));
    var start = state.printing ? 0 : state.page * pageSize;
    var end = state.printing ? total : Math.min(total, start + pageSize);
    var frag = document.createDocumentFragment();
    for (var k = start; k < end; k++) {
      var n = state.matches[k];
      frag.appendChild(row(n));
      if (state.open[n]) { frag.appendChild(detailRow(n)); }
    }
    body.appendChild(frag);
    $("status").textContent = total === cases.length
      ? total + " cases" : total + " of " + cases.length + " cases match";
    $("page").textContent = total ? "rows " + (start + 1) + "–" + end + " of " + total + " · page " + (state.page + 1) + " of " + pages : "no case matches";
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
  }

  function row(n) {
    var c = cases[n], tr = el("tr", "case");
    tr.dataset.case = String(n);
    var id = el("td", "case-id"), button = el("button", null, c.i);
    button.type = "button";
    button.setAttribute("aria-expanded", state.open[n] ? "true" : "false");
    button.addEventListener("click", function () { toggle(n); });
    id.appendChild(button);
    c.c.forEach(function (k) { id.appendChild(el("span", "tag", changeLabels[k])); });
    tr.appendChild(id);
    tr.appendChild(el("td", null, blob.suites[c.s]));
    tr.appendChild(el("td", null, c.p));
    roles.forEach(function (role) {
      var td = el("td", "role-col");
      var r = c.r[role];
      if (r) {
        td.appendChild(el("span", "out " + (r[0] ? "pass" : "fail"),
          (r[0] ? "✓ " : "✗ ") + (typeof r[1] === "number" ? r[1].toFixed(2) : "–")));
        td.dataset.role = role;
        td.dataset.passed = String(r[0]);
      } else {
        td.textContent = "–";
      }
      tr.appendChild(td);
    });
    return tr;
  }

  function toggle(n) {
    if (state.open[n]) { delete state.open[n]; } else { state.open[n] = true; }
    render();
  }

  function text(value) {
    if (value === null || value === undefined) { return ""; }
    return typeof value === "string" ? value : JSON.stringify(value, null, 2);
  }

  function detailRow(n) {
    if (details === null) { details = JSON.parse($("distill-details").textContent); }
    var d = details.cases[n], tr = el("tr", "detail"), td = el("td");
    td.colSpan = 3 + roles.length;
    if (d.ref !== null && d.ref !== undefined) {
      td.appendChild(el("h4", null, "Reference"));
      td.appendChild(el("pre", "reference", text(d.ref)));
    }
    var grid = el("div", "roles");
    roles.forEach(function (role) {
      var r = d.roles[role];
      if (!r) { return; }
      var box = el("div", "role-detail");
      box.dataset.role = role;
      box.appendChild(el("h4", null, role + (r.model ? " · " + r.model : "")));
      if (r.m) {
        var prompt = el("details");
        prompt.appendChild(el("summary", null, "prompt (" + r.m.length + " messages)"));
        r.m.forEach(function (m) {
          prompt.appendChild(el("div", "msg-role", m[0]));
          prompt.appendChild(el("pre", null, details.strings[m[1]]));
        });
        box.appendChild(prompt);
      } else {
        box.appendChild(el("p", "muted", "prompt not in this report"));
      }
      if (!r.tc || r.o) {
        box.appendChild(el("div", "msg-role", "reply"));
        box.appendChild(el("pre", "reply", text(r.o)));
      }
      if (r.tc) {
        box.appendChild(el("div", "msg-role", "tool calls"));
        box.appendChild(el("pre", "reply tool-calls", r.tc.join("\n")));
      }
      var grades = el("ul");
      r.g.forEach(function (g) {
        grades.appendChild(el("li", null, (g[2] ? "✓ " : "✗ ") + g[0] + " " +
          (typeof g[1] === "number" ? g[1].toFixed(3) : "") + (g[3] ? " — " + g[3] : "")));
      });
      box.appendChild(grades);
      var facts = [];
      if (r.tok && r.tok[0] !== null) { facts.push(r.tok[0] + " prompt + " + r.tok[1] + " completion tokens"); }
      if (typeof r.lat === "number") { facts.push(Math.round(r.lat * 1000) + " ms"); }
      if (facts.length) { box.appendChild(el("p", "muted", facts.join(" · "))); }
      grid.appendChild(box);
    });
    td.appendChild(grid);
    tr.appendChild(td);
    return tr;
  }

  ["f-suite", "f-split", "f-outcome", "f-change"].forEach(function (id) {
    $(id).addEventListener("change", filter);
  });
  var timer = null;
  $("f-text").addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(filter, 150);
  });
  $("prev").addEventListener("click", function () { state.page -= 1; render(); });
  $("next").addEventListener("click", function () { state.page += 1; render(); });
  window.addEventListener("beforeprint", function () { state.printing = true; render(); });
  window.addEventListener("afterprint", function () { state.printing = false; render(); });
  filter();
})();
