// Refreshes the dashboard's panels in place every few seconds (no library, nothing downloaded).
// Without JavaScript the page works the same; a reload shows the same figures.
(function () {
  'use strict';
  var panels = document.getElementById('panels');
  if (!panels || !window.fetch) {
    return;
  }
  var url = panels.getAttribute('data-refresh');
  var seconds = parseInt(panels.getAttribute('data-seconds'), 10) || 15;
  function refresh() {
    if (document.hidden) {
      return;
    }
    fetch(url, { credentials: 'same-origin', headers: { Accept: 'text/html' } })
      .then(function (answer) {
        if (answer.status === 401) {
          window.location.assign('/ops/login?next=/ops/');
          return null;
        }
        return answer.ok ? answer.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          panels.innerHTML = html;
        }
      })
      .catch(function () {});
  }
  window.setInterval(refresh, seconds * 1000);
})();
