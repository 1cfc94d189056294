// Grid filters: every card's facts are data attributes, so filtering is a pass over them.
(function () {
  "use strict";
  const cards = Array.from(document.querySelectorAll(".grid .card"));
  const facts = cards.map(function (card) {
    const conf = card.dataset.confidence;
    return {
      card: card,
      correct: card.dataset.correct === "1",
      gold: JSON.parse(card.dataset.goldTags),
      pred: JSON.parse(card.dataset.predTags),
      confidence: conf === "" ? null : parseFloat(conf),
    };
  });
  const wrong = document.getElementById("f-wrong");
  const gold = document.getElementById("f-gold");
  const pred = document.getElementById("f-pred");
  const conf = document.getElementById("f-conf");
  const confText = document.getElementById("f-conf-value");
  const shown = document.getElementById("f-shown");

  function apply() {
    const threshold = parseFloat(conf.value);
    let count = 0;
    facts.forEach(function (f) {
      const keep =
        !(wrong.checked && f.correct) &&
        (gold.value === "" || f.gold.indexOf(gold.value) >= 0) &&
        (pred.value === "" || f.pred.indexOf(pred.value) >= 0) &&
        (threshold >= 1 || (f.confidence !== null && f.confidence < threshold));
      f.card.hidden = !keep;
      if (keep) count += 1;
    });
    confText.textContent = threshold >= 1 ? "any" : "< " + threshold.toFixed(2);
    shown.textContent = count + " of " + facts.length + " shown";
  }

  [wrong, gold, pred, conf].forEach(function (el) {
    el.addEventListener("input", apply);
    el.addEventListener("change", apply);
  });
  document.getElementById("f-reset").addEventListener("click", function () {
    wrong.checked = false;
    gold.value = "";
    pred.value = "";
    conf.value = "1";
    apply();
  });
  // A confusion-matrix cell selects its (gold, predicted) pair in the grid.
  document.querySelectorAll("table.confusion td.cell").forEach(function (cell) {
    cell.addEventListener("click", function () {
      gold.value = cell.dataset.gold;
      pred.value = cell.dataset.pred;
      wrong.checked = false;
      conf.value = "1";
      apply();
      document.getElementById("grid").scrollIntoView({ behavior: "smooth" });
    });
  });
  apply();
})();
