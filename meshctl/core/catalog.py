"""Well-known regions of AWS, GCP and Azure: location and metro (a city shared across clouds).

Used to fill in `meshctl regions add` and the lab topology, and by placement to find the same
metro on another cloud. Coordinates are the providers' published region locations, rounded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RegionInfo:
    id: str
    cloud: str
    name: str
    lat: float
    lon: float
    metro: str


_ROWS = """
aws:us-east-1|N. Virginia|38.9|-77.4|ashburn
aws:us-east-2|Ohio|40.0|-83.0|columbus
aws:us-west-1|N. California|37.4|-121.9|bay-area
aws:us-west-2|Oregon|45.8|-119.7|oregon
aws:ca-central-1|Canada Central|45.5|-73.6|montreal
aws:sa-east-1|Sao Paulo|-23.5|-46.6|sao-paulo
aws:eu-west-1|Ireland|53.3|-6.3|dublin
aws:eu-west-2|London|51.5|-0.1|london
aws:eu-west-3|Paris|48.9|2.35|paris
aws:eu-central-1|Frankfurt|50.1|8.7|frankfurt
aws:eu-north-1|Stockholm|59.3|18.1|stockholm
aws:eu-south-1|Milan|45.5|9.2|milan
aws:me-south-1|Bahrain|26.1|50.6|bahrain
aws:af-south-1|Cape Town|-33.9|18.4|cape-town
aws:ap-east-1|Hong Kong|22.3|114.2|hong-kong
aws:ap-south-1|Mumbai|19.1|72.9|mumbai
aws:ap-northeast-1|Tokyo|35.7|139.7|tokyo
aws:ap-northeast-2|Seoul|37.6|127.0|seoul
aws:ap-northeast-3|Osaka|34.7|135.5|osaka
aws:ap-southeast-1|Singapore|1.35|103.8|singapore
aws:ap-southeast-2|Sydney|-33.9|151.2|sydney
aws:ap-southeast-3|Jakarta|-6.2|106.8|jakarta
gcp:us-central1|Iowa|41.3|-95.9|iowa
gcp:us-east1|South Carolina|33.2|-80.0|south-carolina
gcp:us-east4|N. Virginia|39.0|-77.5|ashburn
gcp:us-west1|Oregon|45.6|-121.2|oregon
gcp:us-west2|Los Angeles|34.1|-118.2|los-angeles
gcp:us-west4|Las Vegas|36.2|-115.1|las-vegas
gcp:northamerica-northeast1|Montreal|45.5|-73.6|montreal
gcp:northamerica-northeast2|Toronto|43.7|-79.4|toronto
gcp:southamerica-east1|Sao Paulo|-23.5|-46.6|sao-paulo
gcp:southamerica-west1|Santiago|-33.4|-70.6|santiago
gcp:europe-west1|Belgium|50.4|3.8|belgium
gcp:europe-west2|London|51.5|-0.1|london
gcp:europe-west3|Frankfurt|50.1|8.7|frankfurt
gcp:europe-west4|Netherlands|53.4|6.8|netherlands
gcp:europe-west6|Zurich|47.4|8.5|zurich
gcp:europe-north1|Finland|60.6|27.0|finland
gcp:europe-central2|Warsaw|52.2|21.0|warsaw
gcp:asia-east1|Taiwan|24.1|120.5|taiwan
gcp:asia-east2|Hong Kong|22.3|114.2|hong-kong
gcp:asia-northeast1|Tokyo|35.7|139.7|tokyo
gcp:asia-northeast2|Osaka|34.7|135.5|osaka
gcp:asia-northeast3|Seoul|37.6|127.0|seoul
gcp:asia-south1|Mumbai|19.1|72.9|mumbai
gcp:asia-south2|Delhi|28.6|77.2|delhi
gcp:asia-southeast1|Singapore|1.35|103.8|singapore
gcp:asia-southeast2|Jakarta|-6.2|106.8|jakarta
gcp:australia-southeast1|Sydney|-33.9|151.2|sydney
gcp:australia-southeast2|Melbourne|-37.8|145.0|melbourne
azure:eastus|Virginia|37.4|-79.2|ashburn
azure:eastus2|Virginia|36.7|-78.4|ashburn
azure:westus|California|37.8|-122.4|bay-area
azure:westus2|Washington|47.2|-119.9|washington
azure:westus3|Arizona|33.4|-112.1|phoenix
azure:centralus|Iowa|41.6|-93.6|iowa
azure:northcentralus|Illinois|41.9|-87.6|chicago
azure:canadacentral|Toronto|43.7|-79.4|toronto
azure:brazilsouth|Sao Paulo State|-23.5|-46.6|sao-paulo
azure:northeurope|Ireland|53.3|-6.3|dublin
azure:westeurope|Netherlands|52.4|4.9|netherlands
azure:uksouth|London|51.5|-0.1|london
azure:francecentral|Paris|46.3|2.4|paris
azure:germanywestcentral|Frankfurt|50.1|8.7|frankfurt
azure:switzerlandnorth|Zurich|47.5|8.6|zurich
azure:norwayeast|Norway|59.9|10.8|oslo
azure:swedencentral|Gavle|60.7|17.1|stockholm
azure:uaenorth|Dubai|25.3|55.3|dubai
azure:southafricanorth|Johannesburg|-25.7|28.2|johannesburg
azure:centralindia|Pune|18.6|73.9|pune
azure:eastasia|Hong Kong|22.3|114.2|hong-kong
azure:japaneast|Tokyo|35.7|139.8|tokyo
azure:koreacentral|Seoul|37.6|127.0|seoul
azure:southeastasia|Singapore|1.3|103.8|singapore
azure:australiaeast|New South Wales|-33.9|151.2|sydney
"""


def _load() -> dict[str, RegionInfo]:
    out: dict[str, RegionInfo] = {}
    for line in _ROWS.strip().splitlines():
        rid, name, lat, lon, metro = line.split("|")
        out[rid] = RegionInfo(rid, rid.split(":", 1)[0], name, float(lat), float(lon), metro)
    return out


CATALOG: dict[str, RegionInfo] = _load()


def lookup(region_id: str) -> RegionInfo | None:
    return CATALOG.get(region_id)
