"""Chinese shop words → English, for searching an English catalogue with a Chinese question.

Why: multilingual-e5 has a same-language bias (a Chinese query lands on the few Chinese
products first, whatever they are: "推荐一款咖啡机" found a rice cooker before any espresso
machine), and BM25 cannot match Chinese words against English text. A fixed word list is
instant, deterministic and testable; it covers product kinds and category words, not
sentences. Longest entries match first ("咖啡机" before "咖啡").
"""

from __future__ import annotations

import re

# Product kinds and categories, as shoppers write them → the words English product
# titles use (several where titles differ: "espresso machine", "coffee maker").
ZH_EN: dict[str, str] = {
    # coffee & tea
    "咖啡机": "coffee machine espresso machine coffee maker",
    "意式咖啡机": "espresso machine",
    "浓缩咖啡": "espresso",
    "磨豆机": "coffee grinder",
    "咖啡豆": "coffee beans",
    "法压壶": "french press",
    "手冲": "pour-over dripper",
    "滤杯": "pour-over dripper",
    "咖啡": "coffee",
    "茶具": "tea set teapot",
    "茶壶": "teapot",
    "茶叶": "loose leaf tea",
    "绿茶": "green tea",
    "红茶": "black tea",
    "茶": "tea",
    "电水壶": "electric kettle",
    "烧水壶": "kettle",
    "水壶": "kettle",
    "杯子": "mug cup",
    "马克杯": "mug",
    # kitchen
    "电饭煲": "rice cooker",
    "电饭锅": "rice cooker",
    "炒锅": "wok frying pan",
    "铁锅": "cast iron skillet wok",
    "平底锅": "frying pan skillet",
    "煎锅": "frying pan",
    "锅": "pan pot",
    "菜刀": "chef's knife",
    "刀具": "knife set",
    "刀": "knife",
    "砧板": "cutting board",
    "菜板": "cutting board",
    "厨房秤": "kitchen scale",
    "搅拌机": "stand mixer blender",
    "厨房": "kitchen",
    # audio
    "降噪耳机": "noise-cancelling headphones",
    "耳机": "headphones earbuds",
    "耳塞": "earbuds",
    "音箱": "speaker",
    "蓝牙音箱": "bluetooth speaker",
    "音响": "speakers soundbar",
    "麦克风": "microphone",
    "唱片机": "turntable",
    # outdoor, running, cycling, bags
    "帐篷": "tent",
    "睡袋": "sleeping bag",
    "防潮垫": "sleeping mat",
    "露营": "camping",
    "徒步": "hiking",
    "冲锋衣": "waterproof hiking jacket shell",
    "雨衣": "rain jacket",
    "夹克": "jacket",
    "外套": "jacket",
    "羽绒服": "down parka",
    "跑鞋": "running shoe",
    "跑步": "running",
    "鞋": "shoe",
    "手表": "watch",
    "头盔": "helmet",
    "自行车": "bike cycling",
    "骑行": "cycling",
    "背包": "backpack",
    "双肩包": "backpack",
    "行李箱": "suitcase",
    "旅行箱": "suitcase",
    "包": "bag",
    # home office, lighting
    "升降桌": "standing desk",
    "桌子": "desk",
    "办公椅": "office chair",
    "椅子": "chair",
    "显示器": "monitor",
    "键盘": "keyboard",
    "鼠标": "mouse",
    "摄像头": "webcam",
    "台灯": "desk lamp",
    "落地灯": "floor lamp",
    "灯泡": "led bulb",
    "夜灯": "night light",
    "灯": "lamp light",
    # bedding, baby, pets
    "枕头": "pillow",
    "枕套": "pillowcase",
    "被子": "duvet",
    "羽绒被": "down duvet",
    "床单": "sheet set",
    "床垫": "mattress topper",
    "毯子": "blanket throw",
    "婴儿车": "stroller pushchair",
    "推车": "stroller",
    "婴儿床": "cot",
    "奶瓶": "baby bottles",
    "宝宝": "baby",
    "婴儿": "baby",
    "狗粮": "dog food",
    "猫粮": "cat food",
    "狗窝": "dog bed",
    "猫砂盆": "cat litter box",
    "猫爬架": "cat tree",
    "狗": "dog",
    "猫": "cat",
    "宠物": "pet",
    # garden, fitness, tools, cleaning
    "园艺": "gardening",
    "花园": "garden",
    "水管": "garden hose",
    "剪刀": "secateurs",
    "割草机": "lawn mower",
    "哑铃": "dumbbells",
    "壶铃": "kettlebell",
    "瑜伽垫": "yoga mat",
    "健身": "fitness",
    "跳绳": "skipping rope",
    "电钻": "cordless drill",
    "螺丝刀": "screwdriver",
    "锤子": "hammer",
    "工具": "tools",
    "吸尘器": "vacuum cleaner",
    "扫地机器人": "robot vacuum",
    "拖把": "mop",
    "空气净化器": "air purifier",
    "除湿机": "dehumidifier",
    # who or what it is for
    "礼物": "gift",
    "送礼": "gift",
}
_KEYS = sorted(ZH_EN, key=len, reverse=True)


def translate_terms(text: str) -> str:
    """English words for the Chinese shop words in `text` (longest match first, each
    character used once), '' when none is known."""
    out: list[str] = []
    rest = text
    for key in _KEYS:
        if key in rest:
            out.append(ZH_EN[key])
            rest = rest.replace(key, " ")
    return " ".join(dict.fromkeys(" ".join(out).split()))


def shop_words(text: str) -> list[str]:
    """The glossary's Chinese shop words in `text`, longest match first ("咖啡机", not also
    "咖啡"): what a Chinese product must name to be about the same thing."""
    found: list[str] = []
    rest = text
    for key in _KEYS:
        if key in rest:
            found.append(key)
            rest = rest.replace(key, " ")
    return found


# The demo catalogue's category names in Chinese: a Chinese fallback (an answer or a
# headline built from the data) names the category in the shopper's language.
ZH_CATEGORY: dict[str, str] = {
    "audio": "音频", "baby": "母婴", "bags & luggage": "箱包", "bedding": "床品",
    "coffee & tea": "咖啡与茶", "cycling": "骑行", "fitness": "健身", "gardening": "园艺",
    "home cleaning": "家居清洁", "home office": "家庭办公", "kitchen": "厨房",
    "lighting": "灯具", "outdoor & camping": "户外露营", "pet supplies": "宠物用品",
    "running": "跑步", "tools": "工具",
}  # fmt: skip


def fit_words(question: str, product_text: str, language: str) -> list[str]:
    """Why a product fits, as the question's own shop words that the product's text names,
    in the shopper's language: "推荐一款适合露营的帐篷" and a product saying "tent" and
    "camping" → ["帐篷", "露营"]; "a gift for a tea lover" and a Chinese tea set (茶具)
    → ["tea"]. Matched across languages through the glossary."""
    text = product_text.lower()

    def names(en: str) -> bool:
        return re.search(rf"\b{re.escape(en)}", text) is not None

    if language == "zh":
        return [
            w
            for w in shop_words(question)
            if w in product_text or any(map(names, ZH_EN[w].split()))
        ]
    asked = set(re.findall(r"[a-z]+", question.lower()))
    out: list[str] = []
    for zh, en in ZH_EN.items():
        for word in en.split():
            if word in asked and word not in out and (zh in product_text or names(word)):
                out.append(word)
    return out
