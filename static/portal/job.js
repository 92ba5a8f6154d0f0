// A job's page follows the job while it runs: the log grows as the job writes it (the API's
// offsets, the same as `porterbox jobs logs -f`), and the page reloads once the job has ended,
// to show how it ended and its output. Without JavaScript, the page's Reload link does this.
"use strict";
(() => {
  const log = document.querySelector("pre.log[data-follow]");
  if (!log) return;
  const empty = document.getElementById("log-empty");
  const live = document.getElementById("job-state-live");
  let offset = Number(log.dataset.offset);
  let state = null;
  const follow = async () => {
    try {
      const answer = await fetch(`${log.dataset.follow}?offset=${offset}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!answer.ok) return setTimeout(follow, 10000);
      const chunk = await answer.json();
      if (chunk.data) {
        const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.hidden = false;
        if (empty) empty.hidden = true;
        log.append(chunk.data);
        if (atEnd) log.scrollTop = log.scrollHeight;
      }
      offset = chunk.next_offset;
      if (chunk.eof) return location.reload();
      const job = await (await fetch(log.dataset.job, { credentials: "same-origin", headers: { Accept: "application/json" } })).json();
      if (state !== null && job.state !== state && live) live.textContent = `The job is now ${job.state}.`;
      state = job.state;
    } catch (error) {
      return setTimeout(follow, 10000);
    }
    setTimeout(follow, 3000);
  };
  setTimeout(follow, 3000);
})();
