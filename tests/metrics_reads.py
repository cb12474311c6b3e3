"""What a Prometheus scrape of the gateway says, read back as numbers: for tests/test_metrics*.py."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


class Scrape(dict):
    """(sample name, {label: value}) -> value, from Prometheus text; `sum` adds the samples that match."""

    @classmethod
    def parse(cls, text: str) -> Scrape:
        scrape = cls()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                scrape[sample.name, frozenset(sample.labels.items())] = sample.value
        return scrape

    def sum(self, name: str, **labels: str) -> float:
        wanted = set(labels.items())
        return sum(value for (sample, have), value in self.items() if sample == name and wanted <= have)

    def by(self, name: str, *labels: str) -> dict[tuple[str, ...], float]:
        """The samples of `name` added up by the values of `labels`."""
        out: dict[tuple[str, ...], float] = {}
        for (sample, have), value in self.items():
            if sample == name:
                key = tuple(dict(have).get(label, "") for label in labels)
                out[key] = out.get(key, 0.0) + value
        return out
