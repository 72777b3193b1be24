// A page answering a refused POST (a form with errors) sets data-page-url on <body>: the
// address bar shows that page's own URL, so reloading it reads the page instead of posting again.
(function () {
  "use strict";
  const url = document.body.dataset.pageUrl;
  if (url && url !== window.location.pathname) window.history.replaceState(null, "", url);
})();
