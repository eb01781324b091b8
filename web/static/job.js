// Polls the job once a second and updates the page in place; stops when the job is finished.
(function () {
  "use strict";
  var root = document.getElementById("job");
  if (!root || !window.fetch) return;
  var url = root.dataset.jobUrl;
  var messages = JSON.parse(root.dataset.messages);
  var steps = JSON.parse(root.dataset.steps);  // [[name, label], ...]
  var names = steps.map(function (s) { return s[0]; });
  var FINISHED = ["succeeded", "failed", "canceled"];

  function $(id) { return document.getElementById(id); }

  function setText(id, text, placeholder) {
    var el = $(id);
    if (text) { el.textContent = text; el.classList.remove("placeholder"); }
    else if (!el.classList.contains("placeholder")) { el.textContent = placeholder; }
  }

  // Same rules as step_states() in web/pages.py.
  function stepStates(job) {
    var current = job.stage || (job.started_at ? "caption" : "queued");
    var index = job.status === "succeeded" ? names.length : Math.max(0, names.indexOf(current));
    var here = job.status === "failed" || job.status === "canceled" ? job.status : "current";
    return names.map(function (n, i) { return i < index ? "done" : i === index ? here : "pending"; });
  }

  function render(job) {
    var label = "starting";
    steps.forEach(function (s) { if (s[0] === job.stage) label = s[1].toLowerCase(); });
    var status = $("status");
    var text = messages[job.status].replace("{stage}", label).replace("{error}", job.error || "unknown error");
    if (status.textContent !== text) status.textContent = text;  // aria-live announces changes only
    status.className = "status status-" + job.status;
    root.dataset.status = job.status;
    stepStates(job).forEach(function (state, i) {
      var li = root.querySelector('[data-step="' + names[i] + '"]');
      li.className = "step " + state;
      li.querySelector(".state").textContent = " (" + state + ")";
    });
    setText("caption", job.caption, "Not yet described.");
    setText("story", job.story, "Not yet written.");
    if (job.audio_url && !$("audio").getAttribute("src")) {
      $("audio").setAttribute("src", job.audio_url);
      $("download").setAttribute("href", job.audio_url + "?download=1");
      $("listen").hidden = false;
    }
    $("cancel").hidden = FINISHED.indexOf(job.status) >= 0;
  }

  function poll(delay) {
    window.setTimeout(function () {
      fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (job) {
          render(job);
          if (FINISHED.indexOf(job.status) < 0) poll(1000);
        })
        .catch(function () { poll(Math.min(delay * 2, 10000)); });  // back off while the server is away
    }, delay);
  }

  if (FINISHED.indexOf(root.dataset.status) < 0) poll(1000);
})();
