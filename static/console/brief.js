// The brief form shows the bounds of the chosen intent's lane (steps, guidance, sizes):
// the server marks the one for the intent it rendered; picking another intent shows that one's.
(function () {
  "use strict";
  document.addEventListener("change", function (event) {
    const select = event.target;
    if (!select.matches || !select.matches("#brief-form select[name=intent]")) return;
    select.form.querySelectorAll(".lane-bounds").forEach(function (p) {
      p.hidden = p.dataset.intent !== select.value;
    });
  });
})();
