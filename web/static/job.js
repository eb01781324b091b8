// Follows the job with long polls (the API answers ?wait=30 when the job changes, or after 30 s)
// and updates the page in place; stops when the job is finished.
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

  // Same rules as step_states() in web/pages/jobs.py.
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
      if (job.subtitles_url) { addTrack(); readAlong(); }
    }
    $("cancel").hidden = FINISHED.indexOf(job.status) >= 0;
  }

  var WAIT = 30;  // seconds the server may hold a poll (it allows up to 60)
  // The job as this page shows it: the server answers as soon as the job differs from it, even when
  // the change came between two polls (or before the first).
  var etag = root.dataset.etag;
  function poll(delay) {
    window.setTimeout(function () {
      var started = Date.now();
      var headers = { Accept: "application/json" };
      if (etag) headers["If-None-Match"] = '"' + etag + '"';
      fetch(url + "?wait=" + WAIT, { headers: headers, cache: "no-store" })
        .then(function (r) {
          if (r.status === 304) return null;  // unchanged all through the wait
          if (!r.ok) throw new Error(r.status);
          etag = (r.headers.get("ETag") || "").replace(/^W\//, "").replace(/"/g, "");
          return r.json();
        })
        .then(function (job) {
          if (job) render(job);
          if (job && FINISHED.indexOf(job.status) >= 0) return;
          // An unchanged answer that came at once (a proxy or server that does not wait) must not
          // turn into a busy loop.
          poll(!job && Date.now() - started < WAIT * 500 ? 1000 : 0);
        })
        .catch(function () { poll(Math.min(Math.max(delay, 500) * 2, 10000)); });  // back off while the server is away
    }, delay);
  }

  function addTrack() {
    var track = document.createElement("track");
    track.kind = "captions"; track.srclang = "en"; track.label = "English";
    track.src = root.dataset.subtitlesSrc;  // same-origin, unlike job.subtitles_url may be
    $("audio").appendChild(track);
  }

  // Read-along: the story becomes one span per written word; a cue's id "w<n>" names the n-th one,
  // so the word being spoken is highlighted as written ("12", though the cue says "twelve").
  // Between two words the last one stays lit.
  var PY_SPACE = /([\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+)/;  // str.split()'s
  // Scripts without spaces between words: each character (with its marks) is a word, as in
  // worker/engine/words.py, whose word numbers the cue ids are.
  var NO_SPACE = /[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\u{20000}-\u{2fa1f}]/u;
  function words(part) {
    if (!NO_SPACE.test(part)) return [part];
    var chars = Array.from(part), out = [], i = 0;
    while (i < chars.length) {
      var unit = NO_SPACE.test(chars[i]);
      if (!unit && out.length && /\p{P}/u.test(chars[i])) { out[out.length - 1] += chars[i++]; continue; }  // "猫。"
      var j = i + 1;
      while (j < chars.length && (unit ? /\p{M}/u.test(chars[j]) : !NO_SPACE.test(chars[j]))) j++;
      out.push(chars.slice(i, j).join(""));
      i = j;
    }
    return out;
  }
  function readAlong() {
    var el = $("audio").querySelector("track");
    var story = $("story");
    if (!el || !el.track || story.dataset.readAlong) return;
    story.dataset.readAlong = "on";
    var spans = [];
    var parts = story.textContent.split(PY_SPACE);
    story.textContent = "";
    parts.forEach(function (part, i) {
      if (!part) return;
      if (i % 2) { story.appendChild(document.createTextNode(part)); return; }  // the whitespace
      words(part).forEach(function (word) {
        var span = document.createElement("span");
        span.textContent = word;
        spans.push(span);
        story.appendChild(span);
      });
    });
    var lit = null;
    el.track.mode = "hidden";  // cues fire cuechange; the browser draws nothing itself
    el.track.addEventListener("cuechange", function () {
      var cue = this.activeCues && this.activeCues[0];
      var span = cue && spans[parseInt(cue.id.slice(1), 10)];
      if (!span || span === lit) return;
      if (lit) lit.classList.remove("speaking");
      span.classList.add("speaking");
      lit = span;
    });
  }

  readAlong();  // a finished job's page comes with its <track>
  if (FINISHED.indexOf(root.dataset.status) < 0) poll(0);
})();

// The album page (web/pages/albums.py): the same rules for several job cards, all polled in one request.
(function () {
  "use strict";
  var album = document.getElementById("album");
  if (!album || !window.fetch) return;
  var url = album.dataset.feedUrl;
  var messages = JSON.parse(album.dataset.messages);
  var steps = JSON.parse(album.dataset.steps);  // [[name, label], ...]
  var names = steps.map(function (s) { return s[0]; });
  var FINISHED = ["succeeded", "failed", "canceled"];

  // Same rules as step_states() and status_text() in web/pages/jobs.py.
  function cardStepStates(job) {
    var current = job.stage || (job.started_at ? "caption" : "queued");
    var index = job.status === "succeeded" ? names.length : Math.max(0, names.indexOf(current));
    var here = job.status === "failed" || job.status === "canceled" ? job.status : "current";
    return names.map(function (n, i) { return i < index ? "done" : i === index ? here : "pending"; });
  }

  function cardStatusText(job) {
    var label = "starting";
    steps.forEach(function (s) { if (s[0] === job.stage) label = s[1].toLowerCase(); });
    return messages[job.status].replace("{stage}", label).replace("{error}", job.error || "unknown error");
  }

  function renderCard(card, job) {
    function field(name) { return card.querySelector('[data-field="' + name + '"]'); }
    function setText(name, text) {
      var el = field(name);
      if (text && el.textContent !== text) { el.textContent = text; el.classList.remove("placeholder"); }
    }
    var status = field("status");
    var text = cardStatusText(job);
    if (status.textContent !== text) status.textContent = text;  // aria-live announces changes only
    status.className = "status status-" + job.status;
    card.dataset.status = job.status;
    cardStepStates(job).forEach(function (state, i) {
      var li = card.querySelector('[data-step="' + names[i] + '"]');
      li.className = "step " + state;
      li.querySelector(".state").textContent = " (" + state + ")";
    });
    setText("caption", job.caption);
    setText("story", job.story);
    if (job.audio_url && !field("audio").getAttribute("src")) {
      field("audio").setAttribute("src", job.audio_url);
      field("download").setAttribute("href", job.audio_url + "?download=1");
      field("listen").hidden = false;
    }
  }

  function pollAlbum(delay) {
    window.setTimeout(function () {
      fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (data) {
          var waiting = false;
          data.jobs.forEach(function (job) {
            var card = album.querySelector('[data-job-id="' + job.id + '"]');
            if (card) renderCard(card, job);
            if (FINISHED.indexOf(job.status) < 0) waiting = true;
          });
          if (waiting) pollAlbum(1000);
        })
        .catch(function () { pollAlbum(Math.min(delay * 2, 10000)); });  // back off while the server is away
    }, delay);
  }

  if (album.dataset.finished !== "true") pollAlbum(1000);
})();
