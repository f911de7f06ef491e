"""Word lists the deterministic scene extractor reads (`scenes.py`): data only.

Small and hand-picked for picture-book prose: what makes a sentence worth drawing
(action verbs), what names a place, and which words carry a mood.
"""

from __future__ import annotations


def words(text: str) -> frozenset[str]:
    return frozenset(text.split())


ACTION_WORDS: frozenset[str] = words(
    """
    ran run runs running raced race races racing rushed rush dashed dash sprinted
    jumped jump jumps jumping leapt leaped leap hopped hop skipped skip bounced
    climbed climb climbs climbing crawled crawl swam swim swims swimming dived dove dive
    flew fly flies flying soared soar glided floated float drifted sailed sail rowed
    rode ride rides riding drove chased chase chases chasing caught catch grabbed grab
    threw throw tossed kicked kick pushed push pulled pull lifted lift carried carry
    opened open opens opening closed broke break smashed crashed crash fell fall falls
    tumbled slid slide slipped rolled roll spun spin twirled danced dance dances dancing
    fought fight hugged hug kissed waved wave pointed point reached reach held hold
    built build dug dig planted painted paint cooked baked ate eat drank read reads
    played play plays playing sang sing sings splashed splash knocked hid hide hides
    found find discovered peeked peered looked watched stared gazed searched explored
    explore entered escaped escape hurried hurry tiptoed crept sneaked marched walked
    walk walks walking wandered strolled stomped stepped hiked followed led
    shouted shout yelled screamed laughed giggled cried roared whispered
    """
)

# Words that end a place phrase: "in the (dark) forest", "at the beach".
PLACE_WORDS: frozenset[str] = words(
    """
    forest woods wood jungle meadow field fields garden park orchard farm barn
    beach sea ocean shore coast island lake river stream pond waterfall bay harbour harbor
    mountain mountains hill hills valley cave canyon desert cliff volcano glacier
    castle palace tower dungeon village town city street streets road path bridge market
    square station school classroom library museum shop bakery cafe hospital zoo circus
    house home cottage cabin hut kitchen bedroom room attic basement cellar hall hallway
    living garage porch yard backyard treehouse tent camp campsite playground
    ship boat train bus car plane rocket spaceship sky clouds space moon stars planet
    snow ice swamp marsh nest burrow den underwater reef kingdom land world
    """
)

PLACE_PREPOSITIONS = (
    "in",
    "at",
    "on",
    "inside",
    "into",
    "onto",
    "under",
    "beneath",
    "near",
    "by",
    "beside",
    "across",
    "through",
    "over",
    "above",
    "along",
    "toward",
    "towards",
    "to",
)

DETERMINERS = ("the", "a", "an", "her", "his", "their", "its", "my", "our", "your", "this")

TIME_WORDS: dict[str, str] = {
    "night": "at night",
    "midnight": "at night",
    "moonlight": "at night",
    "moonlit": "at night",
    "morning": "in the morning",
    "dawn": "at dawn",
    "sunrise": "at sunrise",
    "sunset": "at sunset",
    "dusk": "at dusk",
    "evening": "in the evening",
    "afternoon": "in the afternoon",
    "noon": "at midday",
    "winter": "in winter",
    "snowy": "in winter",
    "summer": "in summer",
    "autumn": "in autumn",
    "spring": "in spring",
    "rain": "in the rain",
    "rainy": "in the rain",
    "storm": "in a storm",
    "stormy": "in a storm",
}

MOOD_WORDS: dict[str, frozenset[str]] = {
    "joyful": words(
        "laughed laugh laughing giggled giggle smiled smile smiling happy happily joy joyful"
        " cheered cheer delighted glad celebrate celebrated party fun grinned"
    ),
    "exciting": words(
        "raced rushed dashed shouted adventure exciting excited thrilling fast quickly"
        " suddenly zoomed chased leapt"
    ),
    "scary": words(
        "afraid scared frightened fear shivered trembled monster dark shadows shadow growl"
        " growled scream screamed danger terrible spooky"
    ),
    "mysterious": words(
        "strange mysterious mystery whispered whisper secret hidden curious wondered"
        " puzzle magic magical glowing glowed"
    ),
    "calm": words(
        "quiet quietly peaceful calm gentle gently softly slowly still sleepy slept dreamed"
        " rested rest"
    ),
    "sad": words("sad sadly cried cry tears lonely alone missed sorry lost sigh sighed"),
    "cozy": words("warm cozy cosy blanket fireplace snuggled cocoa tea hug hugged home"),
}
